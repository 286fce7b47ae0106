/* cron_parse on any text; what parses must give a next slot after any time. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/cron.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = strndup((const char *)data, size);
    struct cron_expr e;
    struct sd_error err;
    if (cron_parse(text, &e, &err) == 0) {
        int64_t t = 1700000000;
        for (int i = 0; i < 3; i++) {
            int64_t next = cron_next(&e, t);
            if (next <= t && next != -1)
                abort(); /* the next slot is after the time asked about */
            t = next > 0 ? next : t + 1;
        }
    }
    free(text);
    return 0;
}
