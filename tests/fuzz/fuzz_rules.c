/* Any Lua source as queue.lua in a copy of the shipped rules, loaded under the
 * sandbox (instruction budget, 64 MiB cap, a 1 s deadline) and, if it loads,
 * called: it loads or fails, and every call returns or fails, within the
 * deadline; never a crash or a hang (libFuzzer's -timeout is the check). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rules/engine.h"

static char dir[64];

static void copy(const char *from_dir, const char *name)
{
    char a[512], b[512];
    snprintf(a, sizeof a, "%s/%s.lua", from_dir, name);
    snprintf(b, sizeof b, "%s/%s.lua", dir, name);
    FILE *in = fopen(a, "rb"), *out = fopen(b, "wb");
    if (!in || !out)
        abort();
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        fwrite(buf, 1, n, out);
    fclose(in);
    fclose(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!dir[0]) {
        const char *src = getenv("SUPPORTD_RULES_DIR");
        snprintf(dir, sizeof dir, "/tmp/supportd-fuzz-rules-XXXXXX");
        if (!src || !mkdtemp(dir))
            abort();
        for (int i = 0; i < rules_file_count; i++)
            copy(src, rules_files[i]);
    }
    char path[128];
    snprintf(path, sizeof path, "%s/queue.lua", dir);
    FILE *f = fopen(path, "wb");
    fwrite(data, 1, size, f);
    fclose(f);
    static const struct rules_limits limits = {.instructions = 2000000, .timeout_ms = 1000};
    struct sd_error err;
    struct rules *r = rules_load(dir, &limits, &err);
    if (r) {
        bson_t *args = BCON_NEW("0", "{", "priority", BCON_UTF8("high"), "created_at",
                                BCON_DATE_TIME(1700000000000), "}", "1", BCON_DATE_TIME(1700000600000));
        bson_t out = BSON_INITIALIZER;
        rules_call(r, "queue", "score", args, &out, &err);
        bson_destroy(&out);
        bson_destroy(args);
        rules_destroy(r);
    }
    return 0;
}
