#include "core/seam.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"

#ifdef SD_TEST_SEAMS
void seam_wait(const char *name)
{
    const char *dir = getenv("QM_SUPPORT_TEST_SEAMS");
    if (!dir || !*dir)
        return;
    char arm[1024], reached[1024], go[1024];
    snprintf(arm, sizeof arm, "%s/%s.arm", dir, name);
    if (access(arm, F_OK) != 0)
        return;
    snprintf(reached, sizeof reached, "%s/%s.reached", dir, name);
    snprintf(go, sizeof go, "%s/%s.go", dir, name);
    FILE *f = fopen(reached, "w");
    if (f)
        fclose(f);
    log_msg(LOG_INFO, NULL, "test.seam", NULL, "waiting at test seam %s", name);
    for (int i = 0; i < 6000 && access(go, F_OK) != 0; i++) {
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
}
#else
/* The release build: no test hook, not even the variable's name. */
void seam_wait(const char *name)
{
    (void)name;
}
#endif
