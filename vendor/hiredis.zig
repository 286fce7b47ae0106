//! hiredis 0.14 (Debian source package hiredis, see manifest.txt) as a static library,
//! compiled by Zig: the objects of upstream's Makefile (OBJ=). dict.c is not one of
//! them; async.c #includes it.
const std = @import("std");

const files = [_][]const u8{ "net.c", "hiredis.c", "sds.c", "async.c", "read.c", "alloc.c" };

/// As upstream's Makefile (its fmacros.h picks the feature-test macros).
/// Debian's backport of the CVE-2021-32765 fix declares createArrayObject with a
/// size_t count while read.h's callback type still says int; gcc (Debian's build) only
/// warns, clang refuses. The value is range-checked to 0..INT_MAX before the call, so
/// the mismatch is harmless on x86_64; accept it as Debian's binary package does.
const flags = [_][]const u8{ "-std=c99", "-Wno-error=incompatible-function-pointer-types" };

pub const Hiredis = struct {
    lib: *std.Build.Step.Compile,
    /// supportd includes <hiredis.h> (the system package's pkg-config points into
    /// its hiredis/ folder), so the include path is the source folder itself.
    include: std.Build.LazyPath,
};

/// `src` is the unpacked source tree.
pub fn build(
    b: *std.Build,
    src: std.Build.LazyPath,
    target: std.Build.ResolvedTarget,
    optimize: std.builtin.OptimizeMode,
) Hiredis {
    const mod = b.createModule(.{
        .target = target,
        .optimize = optimize,
        .link_libc = true,
        .sanitize_c = .off,
    });
    mod.addCSourceFiles(.{ .root = src, .files = &files, .flags = &flags });
    const lib = b.addLibrary(.{ .name = "hiredis", .linkage = .static, .root_module = mod });
    return .{ .lib = lib, .include = src };
}
