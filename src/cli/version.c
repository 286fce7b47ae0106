/* `supportd version`: supportd's version and the version of every library it was
 * built with, one line each, so operators can tell whether a CVE applies without the
 * build logs. Versions come from the libraries themselves at run time where they have
 * a call for it (OpenSSL, curl, libmongoc/libbson, libmicrohttpd), else from their
 * headers (Lua, hiredis: compiled in from the same source as the library). The build
 * adds the Debian source package each library was built from (SD_VENDOR_<NAME>,
 * vendor/manifest.txt); libraries without one are the build machine's system packages. */
#include <bson/bson.h>
#include <curl/curl.h>
#include <hiredis.h>
#include <lua.h>
#include <microhttpd.h>
#include <mongoc/mongoc.h>
#include <openssl/crypto.h>
#include <stdio.h>

#include "cli/cli.h"
#include "core/tz.h"
#include "version.h"

#define STR2(x) #x
#define STR(x) STR2(x)

#ifndef SD_VENDOR_LUA
#define SD_VENDOR_LUA NULL
#endif
#ifndef SD_VENDOR_HIREDIS
#define SD_VENDOR_HIREDIS NULL
#endif
#ifndef SD_VENDOR_OPENSSL
#define SD_VENDOR_OPENSSL NULL
#endif
#ifndef SD_VENDOR_CURL
#define SD_VENDOR_CURL NULL
#endif
#ifndef SD_VENDOR_MONGOC
#define SD_VENDOR_MONGOC NULL
#endif
#ifndef SD_VENDOR_MICROHTTPD
#define SD_VENDOR_MICROHTTPD NULL
#endif
#ifndef SD_VENDOR_TZDATA
#define SD_VENDOR_TZDATA NULL
#endif

/* "NAME VERSION (origin)"; vendor: "source-package debian-version", or NULL */
static void line(const char *name, const char *version, const char *vendor, const char *system)
{
    printf("%s %s (%s%s)\n", name, version ? version : "unknown",
           vendor ? "Debian source " : "", vendor ? vendor : system);
}

int cli_version(void)
{
    printf("supportd %s\ntime zones: %s\n", SUPPORTD_VERSION, tz_source());
    line("lua", LUA_VERSION_MAJOR "." LUA_VERSION_MINOR "." LUA_VERSION_RELEASE, SD_VENDOR_LUA,
         "system library");
    line("hiredis", STR(HIREDIS_MAJOR) "." STR(HIREDIS_MINOR) "." STR(HIREDIS_PATCH),
         SD_VENDOR_HIREDIS, "system library");
    line("openssl", OpenSSL_version(OPENSSL_VERSION_STRING), SD_VENDOR_OPENSSL, "system library");
    line("curl", curl_version_info(CURLVERSION_NOW)->version, SD_VENDOR_CURL, "system library");
    char mongoc[80];
    snprintf(mongoc, sizeof mongoc, "%s, libbson %s", mongoc_get_version(), bson_get_version());
    line("libmongoc", mongoc, SD_VENDOR_MONGOC, "system library");
    line("libmicrohttpd", MHD_get_version(), SD_VENDOR_MICROHTTPD, "system library");
    line("tzdata", tz_data_version(), SD_VENDOR_TZDATA, tz_source());
    return EXIT_OK;
}
