#include "core/cabundle.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

/* Where the major distributions keep the PEM bundle of trusted CAs. The same list
 * curl's own build probes (allyourcodebase/curl, curl's configure), plus the Fedora
 * extracted-trust path and Alpine's cert.pem. */
const char *const cabundle_candidates[] = {
    "/etc/ssl/certs/ca-certificates.crt",                /* Debian, Ubuntu, Alpine, Arch */
    "/etc/pki/tls/certs/ca-bundle.crt",                  /* RHEL, Fedora, CentOS */
    "/etc/ssl/ca-bundle.pem",                            /* openSUSE */
    "/etc/pki/tls/cacert.pem",                           /* OpenELEC */
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", /* RHEL 7+, Fedora */
    "/etc/ssl/cert.pem",                                 /* Alpine, macOS, OpenBSD */
    "/usr/local/share/certs/ca-root-nss.crt",            /* FreeBSD */
    NULL,
};

/* A regular file (after symlinks) that this process can read. */
static int readable_file(const char *path)
{
    struct stat st;
    return path && *path && stat(path, &st) == 0 && S_ISREG(st.st_mode) &&
           access(path, R_OK) == 0;
}

const char *cabundle_path_from(const char *const *candidates)
{
    const char *env = getenv("SSL_CERT_FILE");
    if (readable_file(env))
        return env;
    for (const char *const *p = candidates; p && *p; p++)
        if (readable_file(*p))
            return *p;
    return NULL;
}

const char *cabundle_path(void) { return cabundle_path_from(cabundle_candidates); }
