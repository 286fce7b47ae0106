//! The pinned versions of vendor/manifest.txt, read when the build is configured, and
//! the folders named after them. The build reads the versioned folders
//! (.cache/vendor/src/<name>-<version>, .cache/static/<target>/<name>-<version>), never a
//! "current" symlink: work trees may share one .cache and pin different versions.
const std = @import("std");

pub const Pin = struct { package: []const u8, suite: []const u8, version: []const u8 };

/// The version column of `name`'s line in vendor/manifest.txt
/// (name, source package, suite, version, sha256).
pub fn version(b: *std.Build, name: []const u8) []const u8 {
    return pin(b, name).version;
}

/// `name`'s line in vendor/manifest.txt.
pub fn pin(b: *std.Build, name: []const u8) Pin {
    const path = b.pathFromRoot("vendor/manifest.txt");
    const text = std.fs.cwd().readFileAlloc(b.allocator, path, 1 << 20) catch |e|
        std.debug.panic("cannot read {s}: {s}", .{ path, @errorName(e) });
    var lines = std.mem.splitScalar(u8, text, '\n');
    while (lines.next()) |raw| {
        const line = if (std.mem.indexOfScalar(u8, raw, '#')) |i| raw[0..i] else raw;
        var cols = std.mem.tokenizeAny(u8, line, " \t\r");
        const first = cols.next() orelse continue;
        if (!std.mem.eql(u8, first, name)) continue;
        const package = cols.next();
        const suite = cols.next();
        const ver = cols.next();
        if (ver == null) std.debug.panic("{s}: line of {s} has no version", .{ path, name });
        return .{ .package = package.?, .suite = suite.?, .version = ver.? };
    }
    std.debug.panic("{s} is not pinned in {s}", .{ name, path });
}

/// -DSD_VENDOR_<NAME>="<source package> <version>" for src/cli/version.c.
pub fn vendorMacro(b: *std.Build, name: []const u8) []const u8 {
    const p = pin(b, name);
    const upper = std.ascii.allocUpperString(b.allocator, name) catch @panic("OOM");
    return b.fmt("-DSD_VENDOR_{s}=\"{s} {s}\"", .{ upper, p.package, p.version });
}

/// The unpacked source tree of `name` (scripts/vendor-fetch).
pub fn source(b: *std.Build, name: []const u8) std.Build.LazyPath {
    return b.path(b.fmt(".cache/vendor/src/{s}-{s}", .{ name, version(b, name) }));
}

/// What a library built by scripts/build-static-deps links (its `build_one NAME DEPS`
/// line): its install folder's name carries their versions too.
const links = [_]struct { []const u8, []const u8 }{
    .{ "curl", "openssl" },
    .{ "mongoc", "openssl" },
};

/// `rel` inside the install folder of `name` for `triple` (scripts/build-static-deps
/// --target): .cache/static/<triple>/<name>-<version>[+<dep>-<version>].
pub fn static(b: *std.Build, triple: []const u8, name: []const u8, rel: []const u8) std.Build.LazyPath {
    var folder = b.fmt("{s}-{s}", .{ name, version(b, name) });
    for (links) |l| {
        if (std.mem.eql(u8, l[0], name)) folder = b.fmt("{s}+{s}-{s}", .{ folder, l[1], version(b, l[1]) });
    }
    return b.path(b.fmt(".cache/static/{s}/{s}/{s}", .{ triple, folder, rel }));
}
