//! The pinned versions of vendor/manifest.txt, read when the build is configured, and
//! the folders named after them. The build reads the versioned folders
//! (.cache/vendor/src/<name>-<version>, .cache/static/<name>-<version>), never a
//! "current" symlink: work trees may share one .cache and pin different versions.
const std = @import("std");

/// The version column of `name`'s line in vendor/manifest.txt
/// (name, source package, suite, version, sha256).
pub fn version(b: *std.Build, name: []const u8) []const u8 {
    const path = b.pathFromRoot("vendor/manifest.txt");
    const text = std.fs.cwd().readFileAlloc(b.allocator, path, 1 << 20) catch |e|
        std.debug.panic("cannot read {s}: {s}", .{ path, @errorName(e) });
    var lines = std.mem.splitScalar(u8, text, '\n');
    while (lines.next()) |raw| {
        const line = if (std.mem.indexOfScalar(u8, raw, '#')) |i| raw[0..i] else raw;
        var cols = std.mem.tokenizeAny(u8, line, " \t\r");
        const first = cols.next() orelse continue;
        if (!std.mem.eql(u8, first, name)) continue;
        _ = cols.next(); // source package
        _ = cols.next(); // suite
        return cols.next() orelse std.debug.panic("{s}: line of {s} has no version", .{ path, name });
    }
    std.debug.panic("{s} is not pinned in {s}", .{ name, path });
}

/// The unpacked source tree of `name` (scripts/vendor-fetch).
pub fn source(b: *std.Build, name: []const u8) std.Build.LazyPath {
    return b.path(b.fmt(".cache/vendor/src/{s}-{s}", .{ name, version(b, name) }));
}

/// `rel` inside the install folder of `name` (scripts/build-static-deps).
pub fn static(b: *std.Build, name: []const u8, rel: []const u8) std.Build.LazyPath {
    return b.path(b.fmt(".cache/static/{s}-{s}/{s}", .{ name, version(b, name), rel }));
}
