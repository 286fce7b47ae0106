#include "cli/preview.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/bson_field.h"
#include "core/error.h"

/* One planned notification: its bytes inside the plan (which outlives it).
 * No bson_t here: libbson aligns bson_t to 128 bytes, which a malloc'ed array
 * does not give (UBSan traps), and a static bson_t points into itself. */
struct entry {
    const char *job, *type;
    size_t job_no, seq, file_no;
    const uint8_t *data;
    uint32_t len;
};

/* A read-only view of the entry, on the caller's (aligned) stack. */
static const bson_t *view(const struct entry *e, bson_t *out)
{
    bson_init_static(out, e->data, e->len);
    return out;
}

struct entries {
    struct entry *v;
    size_t n, cap;
};

static const char *str_at(const bson_t *doc, const char *path)
{
    bson_iter_t it, d;
    if (bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, path, &d) &&
        BSON_ITER_HOLDS_UTF8(&d))
        return bson_iter_utf8(&d, NULL);
    return NULL;
}

static const char *or_empty(const char *s) { return s ? s : ""; }

/* An outbox entry, as every sending job plans one (SPEC's
 * conversation-notification): a string key and a string via. */
static bool is_outbox_entry(const bson_t *doc)
{
    return str_at(doc, "key") && str_at(doc, "via");
}

static int push(struct entries *es, const char *job, size_t job_no, const bson_t *doc)
{
    if (es->n == es->cap) {
        size_t cap = es->cap ? es->cap * 2 : 16;
        struct entry *v = realloc(es->v, cap * sizeof *v);
        if (!v)
            return -1;
        es->v = v;
        es->cap = cap;
    }
    struct entry *e = &es->v[es->n];
    e->job = job;
    e->job_no = job_no;
    e->seq = es->n++;
    e->file_no = 0;
    e->type = str_at(doc, "type"); /* points into the plan's bytes */
    e->data = bson_get_data(doc);
    e->len = doc->len;
    return 0;
}

/* Walks a job's plan depth first: outbox entries wherever the job keeps them
 * (snooze: actions[].notifications[], another job: its own list). */
static int collect(bson_iter_t *it, const char *job, size_t job_no, struct entries *es)
{
    while (bson_iter_next(it)) {
        bson_t sub;
        if (!bson_iter_child(it, &sub))
            continue;
        if (BSON_ITER_HOLDS_DOCUMENT(it) && is_outbox_entry(&sub)) {
            if (push(es, job, job_no, &sub))
                return -1;
            continue;
        }
        bson_iter_t child;
        if (bson_iter_init(&child, &sub) && collect(&child, job, job_no, es))
            return -1;
    }
    return 0;
}

/* by job (plan order), then type, then plan order */
static int by_job_type(const void *a, const void *b)
{
    const struct entry *x = a, *y = b;
    if (x->job_no != y->job_no)
        return x->job_no < y->job_no ? -1 : 1;
    int c = strcmp(or_empty(x->type), or_empty(y->type));
    if (c)
        return c;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Every value the preview interpolates goes through here (text and
 * attribute values alike: quotes are escaped too). */
static void esc(FILE *f, const char *s)
{
    for (; s && *s; s++) {
        switch (*s) {
        case '&': fputs("&amp;", f); break;
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '"': fputs("&quot;", f); break;
        case '\'': fputs("&#39;", f); break;
        default: fputc(*s, f);
        }
    }
}

/* ---- files ------------------------------------------------------------------- */

int preview_check_dir(const char *out_dir, struct sd_error *err)
{
    struct stat st;
    if (stat(out_dir, &st) != 0)
        return sd_error_set(err, "--preview %s: %s", out_dir, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return sd_error_set(err, "--preview %s: not a directory", out_dir);
    /* Create a file, as the preview will: access() would say yes to root
     * on a folder it still cannot write (read-only mounts, /proc). */
    char probe[4096];
    snprintf(probe, sizeof probe, "%s/.supportd-preview-%ld", out_dir, (long)getpid());
    int fd = open(probe, O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (fd < 0)
        return sd_error_set(err, "--preview %s: not writable: %s", out_dir, strerror(errno));
    close(fd);
    unlink(probe);
    return 0;
}

/* The files hold customer data: readable by the owner only (0600), created
 * fresh inside the folder as opened: a file of that name is removed first,
 * and a symbolic link put there is never followed (O_NOFOLLOW), nor an
 * existing file written into (O_EXCL). */
static FILE *open_out(const char *dir, const char *name, char *path, size_t cap,
                      struct sd_error *err)
{
    snprintf(path, cap, "%s/%s", dir, name);
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        sd_error_set(err, "--preview: %s: %s", dir, strerror(errno));
        return NULL;
    }
    if (unlinkat(dfd, name, 0) != 0 && errno != ENOENT) {
        sd_error_set(err, "--preview: %s: cannot replace it: %s", path, strerror(errno));
        close(dfd);
        return NULL;
    }
    int fd = openat(dfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    close(dfd);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (!f) {
        sd_error_set(err, "--preview: %s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    /* a BOM: the file is UTF-8 whatever the template's head says, as the
     * mail's Content-Type says in production */
    fputs("\xEF\xBB\xBF", f);
    return f;
}

static int close_out(FILE *f, const char *path, struct sd_error *err)
{
    bool bad = ferror(f) != 0;
    if (fclose(f) != 0 || bad)
        return sd_error_set(err, "--preview: %s: write failed: %s", path, strerror(errno));
    return 0;
}

/* Mail clients run no scripts; neither does the preview, whatever the
 * template contains (an injected <img onerror> still shows, as markup). */
static const char CSP[] =
    "<meta http-equiv=\"Content-Security-Policy\" content=\"script-src 'none'\">";

static void recipient(FILE *f, const bson_t *e)
{
    const char *name = str_at(e, "recipient.name"), *email = str_at(e, "recipient.email");
    const char *phone = str_at(e, "recipient.phone");
    const char *addr = email ? email : phone;
    if (name && addr) {
        esc(f, name);
        fputs(" &lt;", f);
        esc(f, addr);
        fputs("&gt;", f);
    } else {
        esc(f, addr ? addr : or_empty(name));
    }
}

/* Case-insensitive search of an ASCII tag start ("<body") followed by '>' or
 * white space; NULL when absent. `last` finds the last one. */
static const char *find_tag(const char *html, const char *tag, bool last)
{
    size_t n = strlen(tag);
    const char *found = NULL;
    for (const char *p = html; *p; p++) {
        if (*p != '<' || strncasecmp(p, tag, n) != 0)
            continue;
        char c = p[n];
        if (c == '>' || c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '/') {
            found = p;
            if (!last)
                break;
        }
    }
    return found;
}

/* The end of the tag starting at p (just past its '>'), quotes respected. */
static const char *tag_end(const char *p)
{
    char quote = 0;
    for (; *p; p++) {
        if (quote) {
            if (*p == quote)
                quote = 0;
        } else if (*p == '"' || *p == '\'') {
            quote = *p;
        } else if (*p == '>') {
            return p + 1;
        }
    }
    return p;
}

static void mail_header(FILE *f, const struct entry *e)
{
    bson_t v;
    const bson_t *d = view(e, &v);
    fputs("<div id=\"supportd-preview-header\" style=\"all:initial;display:block;"
          "font:13px/1.5 sans-serif;color:#222;background:#eef2f6;border:1px solid #c5ced8;"
          "padding:8px 12px;margin:0 0 16px\"><table style=\"border-collapse:collapse\">",
          f);
    const char *rows[][2] = {{"Job", e->job},
                             {"From", or_empty(str_at(d, "from"))},
                             {"To", NULL},
                             {"Subject", or_empty(str_at(d, "subject"))},
                             {"Type", or_empty(str_at(d, "type"))},
                             {"Outbox key", or_empty(str_at(d, "key"))}};
    for (size_t i = 0; i < sizeof rows / sizeof *rows; i++) {
        fprintf(f, "<tr><th style=\"text-align:left;padding:1px 12px 1px 0;vertical-align:top\">"
                   "%s</th><td class=\"%s\">",
                rows[i][0], i == 2 ? "to" : "v");
        if (i == 2)
            recipient(f, d);
        else
            esc(f, rows[i][1]);
        fputs("</td></tr>", f);
    }
    fputs("</table><a href=\"index.html\" style=\"color:#1a5fb4\">&larr; all planned "
          "notifications</a></div>",
          f);
}

static void mail_text(FILE *f, const bson_t *d)
{
    fputs("<div id=\"supportd-preview-text\" style=\"all:initial;display:block;"
          "font:13px/1.5 sans-serif;color:#222;border-top:1px dashed #c5ced8;margin:24px 0 0;"
          "padding:8px 12px\"><div style=\"font-weight:bold\">Text part</div>"
          "<pre style=\"white-space:pre-wrap;font:13px/1.4 monospace;margin:4px 0\">",
          f);
    esc(f, or_empty(str_at(d, "text")));
    fputs("</pre></div>", f);
}

static int write_mail(const char *dir, const struct entry *e, struct sd_error *err)
{
    char name[40], path[4096];
    snprintf(name, sizeof name, "mail-%03zu.html", e->file_no);
    FILE *f = open_out(dir, name, path, sizeof path, err);
    if (!f)
        return -1;
    bson_t v;
    const bson_t *doc = view(e, &v);
    const char *html = str_at(doc, "html");
    const char *body = html ? find_tag(html, "<body", false) : NULL;
    if (!body) {
        fprintf(f, "<!doctype html><html><head><meta charset=\"utf-8\">%s<title>", CSP);
        esc(f, or_empty(str_at(doc, "subject")));
        fputs("</title></head><body>", f);
        mail_header(f, e);
        if (html)
            fputs(html, f);
        else
            fputs("<p><em>(no HTML part: the mail is sent as text only)</em></p>", f);
        mail_text(f, doc);
        fputs("</body></html>\n", f);
        return close_out(f, path, err);
    }
    /* The HTML part byte for byte, with the CSP first (after a doctype), the
     * header just inside <body>, the text part just before </body>. */
    const char *start = html;
    if (strncasecmp(html, "<!doctype", 9) == 0)
        start = tag_end(html);
    const char *open_end = tag_end(body);
    const char *close = find_tag(open_end, "</body", true);
    if (!close)
        close = open_end + strlen(open_end);
    fwrite(html, 1, (size_t)(start - html), f);
    fputs(CSP, f);
    fwrite(start, 1, (size_t)(open_end - start), f);
    mail_header(f, e);
    fwrite(open_end, 1, (size_t)(close - open_end), f);
    mail_text(f, doc);
    fputs(close, f);
    return close_out(f, path, err);
}

static int write_index(const char *dir, const bson_t *plan, const struct entries *es,
                       const struct preview_counts *c, struct sd_error *err)
{
    char path[4096];
    FILE *f = open_out(dir, "index.html", path, sizeof path, err);
    if (!f)
        return -1;
    fprintf(f,
            "<!doctype html><html><head><meta charset=\"utf-8\">%s"
            "<title>supportd dry-run preview</title><style>"
            "body{font:14px/1.5 sans-serif;margin:24px;color:#222}"
            "table{border-collapse:collapse;margin:4px 0 16px}"
            "th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}"
            "th{background:#f3f5f7}pre{white-space:pre-wrap;margin:0;font:13px/1.4 monospace}"
            "code{font-size:12px;color:#555}"
            "</style></head><body><h1>Planned notifications</h1><p id=\"summary\">dry-run at ",
            CSP);
    esc(f, or_empty(str_at(plan, "now")));
    fputs(" with rules ", f);
    esc(f, or_empty(str_at(plan, "rules")));
    fprintf(f, ": %zu email(s), %zu SMS. Nothing was sent.</p>\n", c->mails, c->sms);
    if (es->n == 0)
        fputs("<p>No notifications planned.</p>\n", f);
    for (size_t i = 0; i < es->n; i++) {
        const struct entry *e = &es->v[i];
        const char *type = or_empty(e->type);
        bool new_job = i == 0 || es->v[i - 1].job_no != e->job_no;
        bool new_type = new_job || strcmp(type, or_empty(es->v[i - 1].type));
        if (new_type && i > 0)
            fputs("</table>\n", f);
        if (new_job) {
            fputs("<h2>", f);
            esc(f, e->job);
            fputs("</h2>\n", f);
        }
        if (new_type) {
            fputs("<h3>", f);
            esc(f, type);
            fputs("</h3>\n<table><tr><th>via</th><th>to</th><th>subject / text</th>"
                  "<th>outbox key</th></tr>\n",
                  f);
        }
        bson_t v;
        const bson_t *doc = view(e, &v);
        const char *via = or_empty(str_at(doc, "via"));
        fputs("<tr><td>", f);
        esc(f, via);
        fputs("</td><td>", f);
        recipient(f, doc);
        fputs("</td><td>", f);
        if (e->file_no) {
            fprintf(f, "<a href=\"mail-%03zu.html\">", e->file_no);
            esc(f, or_empty(str_at(doc, "subject")));
            fputs("</a>", f);
        } else {
            int ucs2 = 0;
            size_t segments = preview_sms_segments(or_empty(str_at(doc, "text")), &ucs2);
            fputs("<pre>", f);
            esc(f, or_empty(str_at(doc, "text")));
            fprintf(f, "</pre><div class=\"segments\">%zu segment%s (%s)</div>", segments,
                    segments == 1 ? "" : "s", ucs2 ? "UCS-2" : "GSM-7");
        }
        fputs("</td><td><code>", f);
        esc(f, or_empty(str_at(doc, "key")));
        fputs("</code></td></tr>\n", f);
    }
    if (es->n)
        fputs("</table>\n", f);
    fputs("</body></html>\n", f);
    return close_out(f, path, err);
}

int preview_write(const bson_t *plan, const char *out_dir, struct preview_counts *counts,
                  struct sd_error *err)
{
    struct entries es = {0};
    struct preview_counts c = {0};
    bson_iter_t jobs, job;
    size_t job_no = 0;
    if (bson_iter_init_find(&jobs, plan, "jobs") && BSON_ITER_HOLDS_DOCUMENT(&jobs) &&
        bson_iter_recurse(&jobs, &job)) {
        while (bson_iter_next(&job)) {
            bson_iter_t inner;
            if (!BSON_ITER_HOLDS_DOCUMENT(&job) || !bson_iter_recurse(&job, &inner))
                continue;
            if (collect(&inner, bson_iter_key(&job), job_no++, &es)) {
                free(es.v);
                return sd_error_set(err, "--preview: out of memory");
            }
        }
    }
    if (es.n)
        qsort(es.v, es.n, sizeof *es.v, by_job_type);
    int rc = 0;
    for (size_t i = 0; i < es.n && rc == 0; i++) {
        bson_t v;
        const char *via = or_empty(str_at(view(&es.v[i], &v), "via"));
        if (!strcmp(via, "sms")) {
            c.sms++;
            continue;
        }
        /* email, and anything else with a subject or HTML part */
        es.v[i].file_no = ++c.mails;
        rc = write_mail(out_dir, &es.v[i], err);
    }
    if (rc == 0)
        rc = write_index(out_dir, plan, &es, &c, err);
    free(es.v);
    if (counts)
        *counts = c;
    return rc;
}
