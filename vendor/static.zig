//! The release build: one fully static x86_64-linux-musl supportd
//! (`zig build -Dstatic=true -Doptimize=ReleaseSafe`), or the same for arm64
//! (`... -Dtarget=aarch64-linux-musl`, cross-compiled from the same pins).
//!
//! The third-party libraries come from the Debian source packages pinned in
//! vendor/manifest.txt, fetched into .cache/vendor/src/<name>-<version>/ by
//! scripts/vendor-fetch:
//!   - OpenSSL, curl, libmongoc + libbson, libmicrohttpd: built by their own build systems with
//!     `zig cc -target <target>` as the compiler, by scripts/build-static-deps
//!     (which runs vendor-fetch first), into .cache/static/<target>/<name>-<version>/. That script
//!     runs at the start of every static build and returns at once when its stamps are
//!     current.
//!   - the IANA zone rules (tzdata): compiled by zic into .cache/static/<target>/tzdata-<version>/tzdata.c
//!     by the same script, and compiled into supportd here (src/core/tz.c);
//!   - Lua and hiredis (+ hiredis_ssl, against the OpenSSL above): compiled here by Zig
//!     (lua.zig, hiredis.zig); Zig's cache keeps them.
//! Every library is built without UBSan and optimized (their own Release settings, or
//! ReleaseFast here), whatever -Doptimize says for supportd itself.
const std = @import("std");
const lua = @import("lua.zig");
const hiredis = @import("hiredis.zig");
const pins = @import("pins.zig");

/// The release target: baseline x86_64 (no CPU features beyond the ABI's), musl libc
/// linked in statically; or -Dtarget=aarch64-linux-musl (baseline ARMv8-A).
pub fn target(b: *std.Build) std.Build.ResolvedTarget {
    const t = b.standardTargetOptions(.{
        .default_target = .{ .cpu_arch = .x86_64, .os_tag = .linux, .abi = .musl },
    });
    const r = t.result;
    const supported = (r.cpu.arch == .x86_64 or r.cpu.arch == .aarch64) and r.os.tag == .linux and r.abi == .musl;
    if (!supported) std.debug.panic("-Dstatic=true builds for x86_64-linux-musl or aarch64-linux-musl, not {s}-{s}-{s}", .{
        @tagName(r.cpu.arch), @tagName(r.os.tag), @tagName(r.abi),
    });
    return t;
}

/// The folder of `t` under .cache/static (scripts/build-static-deps --target).
pub fn triple(b: *std.Build, t: std.Build.ResolvedTarget) []const u8 {
    return b.fmt("{s}-linux-musl", .{@tagName(t.result.cpu.arch)});
}

/// Archives built by scripts/build-static-deps, in link order (a library before what it
/// uses): library and file inside .cache/static/<target>/<library>-<pinned version>/.
const archives = [_][2][]const u8{
    .{ "microhttpd", "lib/libmicrohttpd.a" },
    .{ "mongoc", "lib/libmongoc-static-1.0.a" },
    .{ "mongoc", "lib/libbson-static-1.0.a" },
    .{ "curl", "lib/libcurl.a" },
    .{ "openssl", "lib/libssl.a" },
    .{ "openssl", "lib/libcrypto.a" },
};
const include_dirs = [_][]const u8{ "microhttpd", "mongoc", "curl", "openssl" };

pub const Libs = struct {
    lua: lua.Lua,
    hiredis: hiredis.Hiredis,
    strip: bool,
    /// x86_64-linux-musl or aarch64-linux-musl: the folder under .cache/static.
    triple: []const u8,

    /// Puts the static libraries and their headers into `mod` (instead of the system
    /// libraries of the development build), and strips it unless -Dstrip=false.
    pub fn link(self: *const Libs, mod: *std.Build.Module) void {
        const b = mod.owner;
        // -isystem: the libraries' headers are not held to supportd's -Werror.
        for (include_dirs) |name| mod.addSystemIncludePath(pins.static(b, self.triple, name, "include"));
        for (self.lua.include) |dir| mod.addSystemIncludePath(dir);
        mod.addSystemIncludePath(self.hiredis.include);
        // Only matter on Windows, but say what these headers are used for.
        mod.addCMacro("BSON_STATIC", "1");
        mod.addCMacro("MONGOC_STATIC", "1");
        mod.addCMacro("CURL_STATICLIB", "1");
        mod.linkLibrary(self.lua.lib);
        mod.linkLibrary(self.hiredis.ssl);
        mod.linkLibrary(self.hiredis.lib);
        for (archives) |a| mod.addObjectFile(pins.static(b, self.triple, a[0], a[1]));
        // The zone rules, compiled from the pinned tzdata by scripts/build-static-deps
        // (src/core/tz.c reads them instead of /usr/share/zoneinfo).
        mod.addCSourceFile(.{ .file = pins.static(b, self.triple, "tzdata", "tzdata.c"), .flags = &.{"-std=c11"} });
        mod.addCMacro("SD_TZ_EMBEDDED", "1");
        mod.strip = self.strip;
    }
};

pub fn build(b: *std.Build, t: std.Build.ResolvedTarget) *Libs {
    const strip = b.option(bool, "strip", "With -Dstatic: strip the binary (default true)") orelse true;
    const tr = triple(b, t);

    // Fetches the sources and builds the libraries that have their own build systems.
    // It has side effects (no declared outputs), so it runs on every static build; it
    // keeps its own stamps and does nothing when they are current.
    const deps = b.addSystemCommand(&.{ b.pathFromRoot("scripts/build-static-deps"), "--target", tr });
    deps.setCwd(b.path("."));
    deps.setEnvironmentVariable("ZIG", b.graph.zig_exe);
    deps.setName("build-static-deps (OpenSSL, curl, mongoc, microhttpd)");

    const libs = b.allocator.create(Libs) catch @panic("OOM");
    libs.* = .{
        .lua = lua.build(b, pins.source(b, "lua"), t, .ReleaseFast),
        .hiredis = hiredis.build(b, pins.source(b, "hiredis"), t, .ReleaseFast, pins.static(b, tr, "openssl", "include")),
        .strip = strip,
        .triple = tr,
    };
    // Every compilation that links these libraries depends on lua and hiredis (through
    // linkLibrary), and those wait for the script: so supportd's compile step starts
    // only once the sources are fetched and the archives above exist.
    libs.lua.lib.step.dependOn(&deps.step);
    libs.hiredis.lib.step.dependOn(&deps.step);
    libs.hiredis.ssl.step.dependOn(&deps.step);
    return libs;
}
