/* The fixture loader on any bytes as conversation-conversation.json (or, when
 * the first byte is 'M', the rest as meta.json). */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "jobs/fixtures.h"

static char dir[64];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!dir[0]) {
        snprintf(dir, sizeof dir, "/tmp/supportd-fuzz-fixtures-XXXXXX");
        if (!mkdtemp(dir))
            abort();
    }
    bool meta = size && data[0] == 'M';
    const char *name = meta ? "meta.json" : "conversation-conversation.json";
    if (meta) {
        data++;
        size--;
    }
    char path[128];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f)
        abort();
    fwrite(data, 1, size, f);
    fclose(f);
    struct sd_error err;
    struct fixtures *fx = fixtures_load(dir, &err);
    if (fx) {
        size_t n;
        const bson_t *const *docs = fixtures_docs(fx, "conversation-conversation", &n);
        for (size_t i = 0; i < n; i++)
            (void)bson_count_keys(docs[i]);
        (void)fixtures_now(fx);
        fixtures_destroy(fx);
    }
    unlink(path);
    return 0;
}
