/* plan_diff.c — two plans compared by outbox key (see plan_diff.h). */
#include "jobs/plan_diff.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/bson_field.h"

/* The entry's bytes in the plan, not a bson_t view: the list is grown and
 * sorted, and a view must not move (libbson keeps it aligned in place). */
struct planned {
    const char *key, *job, *type;
    const uint8_t *data;
    uint32_t len;
};

static void view(const struct planned *p, bson_t *out) { bson_init_static(out, p->data, p->len); }

struct list {
    struct planned *v;
    size_t n, cap;
};

static void collect(const bson_t *plan, struct list *l)
{
    bson_iter_t jobs, job, actions, notes;
    if (!bson_iter_init_find(&jobs, plan, "jobs") || !bson_iter_recurse(&jobs, &job))
        return;
    while (bson_iter_next(&job)) {
        bson_t jdoc;
        if (!bson_iter_child(&job, &jdoc) || !bson_path_each(&jdoc, "actions", &actions))
            continue;
        while (bson_iter_next(&actions)) {
            bson_t adoc;
            if (!bson_iter_child(&actions, &adoc) || !bson_path_each(&adoc, "notifications", &notes))
                continue;
            while (bson_iter_next(&notes)) {
                struct planned p = {.job = bson_iter_key(&job)};
                bson_t entry;
                if (!BSON_ITER_HOLDS_DOCUMENT(&notes))
                    continue;
                bson_iter_document(&notes, &p.len, &p.data);
                view(&p, &entry);
                p.key = bson_path_text(&entry, "key");
                p.type = bson_path_text(&entry, "type");
                if (!*p.key)
                    continue;
                if (l->n == l->cap) {
                    l->cap = l->cap ? 2 * l->cap : 64;
                    l->v = realloc(l->v, l->cap * sizeof *l->v);
                    if (!l->v)
                        abort();
                }
                l->v[l->n++] = p;
            }
        }
    }
}

static int by_key(const void *a, const void *b)
{
    return strcmp(((const struct planned *)a)->key, ((const struct planned *)b)->key);
}

static bool same_field(const bson_t *a, const bson_t *b, const char *field)
{
    bson_iter_t ia, ib;
    bool ha = bson_iter_init_find(&ia, a, field), hb = bson_iter_init_find(&ib, b, field);
    if (ha != hb)
        return false;
    if (!ha)
        return true;
    const bson_value_t *va = bson_iter_value(&ia), *vb = bson_iter_value(&ib);
    if (va->value_type != vb->value_type)
        return false;
    bson_t da, db;
    switch (va->value_type) {
    case BSON_TYPE_UTF8:
        return va->value.v_utf8.len == vb->value.v_utf8.len &&
               memcmp(va->value.v_utf8.str, vb->value.v_utf8.str, va->value.v_utf8.len) == 0;
    case BSON_TYPE_DOCUMENT:
    case BSON_TYPE_ARRAY:
        bson_iter_child(&ia, &da);
        bson_iter_child(&ib, &db);
        return bson_equal(&da, &db);
    default:
        return bson_iter_as_int64(&ia) == bson_iter_as_int64(&ib);
    }
}

static void append_entry(bson_t *array, uint32_t *n, const struct planned *p)
{
    char idx[16];
    const char *key;
    bson_uint32_to_string((*n)++, &key, idx, sizeof idx);
    bson_t doc;
    BSON_APPEND_DOCUMENT_BEGIN(array, key, &doc);
    BSON_APPEND_UTF8(&doc, "job", p->job);
    bson_t entry;
    view(p, &entry);
    bson_concat(&doc, &entry);
    bson_append_document_end(array, &doc);
}

/* counts.<job>.<type>.<what> += 1, in a flat tally kept while walking */
struct tally {
    char job[64], type[96];
    int64_t added, removed, changed;
};

static struct tally *tally_of(struct tally **t, size_t *n, const struct planned *p)
{
    for (size_t i = 0; i < *n; i++)
        if (!strcmp((*t)[i].job, p->job) && !strcmp((*t)[i].type, p->type))
            return &(*t)[i];
    *t = realloc(*t, (*n + 1) * sizeof **t);
    if (!*t)
        abort();
    struct tally *x = &(*t)[(*n)++];
    memset(x, 0, sizeof *x);
    snprintf(x->job, sizeof x->job, "%s", p->job);
    snprintf(x->type, sizeof x->type, "%s", p->type);
    return x;
}

static int by_job_type(const void *a, const void *b)
{
    const struct tally *x = a, *y = b;
    int c = strcmp(x->job, y->job);
    return c ? c : strcmp(x->type, y->type);
}

void plan_diff(const bson_t *rules_plan, const bson_t *against_plan, bson_t *diff)
{
    static const char *const fields[] = {"recipient", "via", "subject", "text", "html", "body"};
    struct list a = {0}, b = {0};
    collect(rules_plan, &a);
    collect(against_plan, &b);
    if (a.n)
        qsort(a.v, a.n, sizeof *a.v, by_key);
    if (b.n)
        qsort(b.v, b.n, sizeof *b.v, by_key);
    bson_t added = BSON_INITIALIZER, removed = BSON_INITIALIZER, changed = BSON_INITIALIZER;
    uint32_t n_added = 0, n_removed = 0, n_changed = 0;
    struct tally *tallies = NULL;
    size_t n_tallies = 0;
    size_t i = 0, j = 0;
    while (i < a.n || j < b.n) {
        int c = i == a.n ? 1 : j == b.n ? -1 : strcmp(a.v[i].key, b.v[j].key);
        if (c < 0) {
            append_entry(&added, &n_added, &a.v[i]);
            tally_of(&tallies, &n_tallies, &a.v[i])->added++;
            i++;
        } else if (c > 0) {
            append_entry(&removed, &n_removed, &b.v[j]);
            tally_of(&tallies, &n_tallies, &b.v[j])->removed++;
            j++;
        } else {
            bson_t names = BSON_INITIALIZER, ea, eb;
            view(&a.v[i], &ea);
            view(&b.v[j], &eb);
            uint32_t n_names = 0;
            for (size_t f = 0; f < sizeof fields / sizeof *fields; f++) {
                if (same_field(&ea, &eb, fields[f]))
                    continue;
                char idx[16];
                const char *key;
                bson_uint32_to_string(n_names++, &key, idx, sizeof idx);
                bson_append_utf8(&names, key, -1, fields[f], -1);
            }
            if (n_names) {
                char idx[16];
                const char *key;
                bson_uint32_to_string(n_changed++, &key, idx, sizeof idx);
                bson_t ch;
                BSON_APPEND_DOCUMENT_BEGIN(&changed, key, &ch);
                BSON_APPEND_UTF8(&ch, "key", a.v[i].key);
                BSON_APPEND_UTF8(&ch, "type", a.v[i].type);
                BSON_APPEND_UTF8(&ch, "job", a.v[i].job);
                BSON_APPEND_ARRAY(&ch, "fields", &names);
                BSON_APPEND_DOCUMENT(&ch, "rules", &ea);
                BSON_APPEND_DOCUMENT(&ch, "against", &eb);
                bson_append_document_end(&changed, &ch);
                tally_of(&tallies, &n_tallies, &a.v[i])->changed++;
            }
            bson_destroy(&names);
            i++;
            j++;
        }
    }
    BSON_APPEND_ARRAY(diff, "added", &added);
    BSON_APPEND_ARRAY(diff, "removed", &removed);
    BSON_APPEND_ARRAY(diff, "changed", &changed);
    if (n_tallies)
        qsort(tallies, n_tallies, sizeof *tallies, by_job_type);
    bson_t counts, job, type;
    BSON_APPEND_DOCUMENT_BEGIN(diff, "counts", &counts);
    for (size_t k = 0; k < n_tallies;) {
        BSON_APPEND_DOCUMENT_BEGIN(&counts, tallies[k].job, &job);
        size_t first = k;
        for (; k < n_tallies && !strcmp(tallies[k].job, tallies[first].job); k++) {
            BSON_APPEND_DOCUMENT_BEGIN(&job, tallies[k].type, &type);
            BSON_APPEND_INT64(&type, "added", tallies[k].added);
            BSON_APPEND_INT64(&type, "removed", tallies[k].removed);
            BSON_APPEND_INT64(&type, "changed", tallies[k].changed);
            bson_append_document_end(&job, &type);
        }
        bson_append_document_end(&counts, &job);
    }
    bson_append_document_end(diff, &counts);
    bson_destroy(&added);
    bson_destroy(&removed);
    bson_destroy(&changed);
    free(tallies);
    free(a.v);
    free(b.v);
}

static void print_list(const bson_t *diff, const char *name, char mark)
{
    bson_iter_t it;
    if (!bson_path_each(diff, name, &it))
        return;
    while (bson_iter_next(&it)) {
        bson_t e;
        if (!bson_iter_child(&it, &e))
            continue;
        const char *to = bson_path_text(&e, "recipient.email");
        if (mark == '~') {
            printf("  ~ %s (", bson_path_text(&e, "key"));
            bson_iter_t f;
            bool first = true;
            if (bson_path_each(&e, "fields", &f))
                while (bson_iter_next(&f)) {
                    printf("%s%s", first ? "" : ", ", bson_iter_utf8(&f, NULL));
                    first = false;
                }
            printf(")\n");
        } else {
            printf("  %c %s → %s: \"%s\"\n", mark, bson_path_text(&e, "key"),
                   *to ? to : bson_path_text(&e, "recipient.phone"), bson_path_text(&e, "subject"));
        }
    }
}

void plan_diff_print_text(const bson_t *diff, const char *rules_version,
                          const char *against_version)
{
    printf("\ndiff: rules %s against %s\n", rules_version, against_version);
    bson_iter_t jobs, types, t;
    bool any = false;
    if (bson_iter_init_find(&jobs, diff, "counts") && bson_iter_recurse(&jobs, &jobs)) {
        while (bson_iter_next(&jobs)) {
            printf("  %s:", bson_iter_key(&jobs));
            bool first = true;
            if (!bson_iter_recurse(&jobs, &types))
                continue;
            while (bson_iter_next(&types)) {
                static const char *const what[] = {"added", "removed", "changed"};
                static const char marks[] = {'+', '-', '~'};
                for (int k = 0; k < 3; k++) {
                    if (!bson_iter_recurse(&types, &t) || !bson_iter_find(&t, what[k]) ||
                        bson_iter_as_int64(&t) == 0)
                        continue;
                    printf("%s %c%lld %s", first ? "" : ",", marks[k],
                           (long long)bson_iter_as_int64(&t), bson_iter_key(&types));
                    first = false;
                    any = true;
                }
            }
            printf("\n");
        }
    }
    if (!any) {
        printf("  no notification would change\n");
        return;
    }
    print_list(diff, "added", '+');
    print_list(diff, "removed", '-');
    print_list(diff, "changed", '~');
}
