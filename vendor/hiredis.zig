//! hiredis 1.2 (Debian source package hiredis, see manifest.txt) and its TLS part
//! hiredis_ssl as static libraries, compiled by Zig, for both the development and the
//! release build (one library, one code path): the objects of upstream's Makefile
//! (OBJ= and SSL_OBJ=). dict.c is not one of them; async.c #includes it.
const std = @import("std");

const files = [_][]const u8{ "alloc.c", "net.c", "hiredis.c", "sds.c", "async.c", "read.c", "sockcompat.c" };
const ssl_files = [_][]const u8{"ssl.c"};

/// As upstream's Makefile (its fmacros.h picks the feature-test macros).
const flags = [_][]const u8{"-std=c99"};

pub const Hiredis = struct {
    lib: *std.Build.Step.Compile,
    ssl: *std.Build.Step.Compile,
    /// supportd includes <hiredis.h> and <hiredis_ssl.h>: the source folder itself.
    include: std.Build.LazyPath,
};

/// `src` is the unpacked source tree; `openssl_include` the OpenSSL headers hiredis_ssl
/// is compiled against (null: the system's, /usr/include).
pub fn build(
    b: *std.Build,
    src: std.Build.LazyPath,
    target: std.Build.ResolvedTarget,
    optimize: std.builtin.OptimizeMode,
    openssl_include: ?std.Build.LazyPath,
) Hiredis {
    const mod = b.createModule(.{
        .target = target,
        .optimize = optimize,
        .link_libc = true,
        .sanitize_c = .off,
    });
    mod.addCSourceFiles(.{ .root = src, .files = &files, .flags = &flags });
    const lib = b.addLibrary(.{ .name = "hiredis", .linkage = .static, .root_module = mod });

    const ssl_mod = b.createModule(.{
        .target = target,
        .optimize = optimize,
        .link_libc = true,
        .sanitize_c = .off,
    });
    if (openssl_include) |dir| ssl_mod.addSystemIncludePath(dir);
    ssl_mod.addCSourceFiles(.{ .root = src, .files = &ssl_files, .flags = &flags });
    const ssl = b.addLibrary(.{ .name = "hiredis_ssl", .linkage = .static, .root_module = ssl_mod });
    return .{ .lib = lib, .ssl = ssl, .include = src };
}
