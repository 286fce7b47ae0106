//! supportd's build (Zig 0.15.1, module-based API).
//!
//!   zig build                      zig-out/bin/supportd against the system's libraries (pkg-config),
//!                                  but hiredis (+ hiredis_ssl) from its pinned source, as the release
//!   zig build test                 build and run the cmocka unit tests
//!   zig build bench                the benchmark programs (scripts/bench patterns)
//!   zig build -Dsanitize=true      AddressSanitizer + UBSan (the test script uses it), installed
//!                                  under zig-out/sanitize/ (bin/, test/, bench/) so that
//!                                  zig-out/bin/supportd is always a plain, runnable build
//!   zig build -Dstatic=true -Doptimize=ReleaseSafe
//!                                  the release binary: static x86_64-linux-musl, libraries
//!                                  built from pinned sources (vendor/static.zig)
//!   zig build -Dstatic=true -Doptimize=ReleaseSafe -Dtarget=aarch64-linux-musl
//!                                  the same for arm64, cross-compiled
const std = @import("std");
const vendor = @import("vendor/static.zig");
const hiredis = @import("vendor/hiredis.zig");
const pins = @import("vendor/pins.zig");

/// The vendored static libraries with -Dstatic=true, else null (system libraries).
var static_libs: ?*vendor.Libs = null;
/// The development build's hiredis: compiled from the pinned source (Debian 12 has no
/// hiredis with TLS), against the system's OpenSSL.
var dev_hiredis: ?hiredis.Hiredis = null;

const c_flags = [_][]const u8{
    "-std=c11",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-D_GNU_SOURCE",
    "-fno-omit-frame-pointer",
};

/// Everything but main.c, so unit tests link the same objects as the binary.
const core_sources = [_][]const u8{
    "src/core/error.c",
    "src/core/clock.c",
    "src/core/log.c",
    "src/core/cron.c",
    "src/core/config.c",
    "src/core/scheduler.c",
    "src/core/cabundle.c",
    "src/core/redis_url.c",
    "src/store/redis.c",
    "src/store/lease.c",
    "src/store/health.c",
    "src/store/mongo.c",
    "src/store/indexes.c",
    "src/jobs/registry.c",
    "src/jobs/runner.c",
    "src/jobs/probe.c",
    "src/cli/common.c",
    "src/cli/help.c",
    "src/cli/once.c",
    "src/cli/run.c",
    "src/cli/status.c",
    "src/cli/rules.c",
    "src/cli/dry_run.c",
    "src/cli/explain.c",
    "src/cli/preview.c",
    "src/cli/sms_segments.c",
    "src/core/seam.c",
    "src/core/stall.c",
    "src/jobs/snooze/job.c",
    "src/jobs/snooze/decide.c",
    "src/jobs/snooze/dryrun.c",
    "src/jobs/message_status/job.c",
    "src/jobs/message_status/apply.c",
    "src/jobs/message_status/events.c",
    "src/jobs/message_status/decide.c",
    "src/jobs/message_status/select.c",
    "src/jobs/message_status/retry.c",
    "src/jobs/message_status/dryrun.c",
    "src/jobs/message_status/journal.c",
    "src/store/stream.c",
    "src/store/find_in.c",
    "src/store/batches.c",
    "src/providers/form.c",
    "src/jobs/notification/job.c",
    "src/jobs/notification/sla_calendar.c",
    "src/jobs/notification/decide.c",
    "src/jobs/notification/dryrun.c",
    "src/core/tz.c",
    "src/jobs/fixtures.c",
    "src/jobs/dryrun.c",
    "src/jobs/live.c",
    "src/jobs/plan_diff.c",
    "src/jobs/commcheck/job.c",
    "src/jobs/commcheck/decide.c",
    "src/jobs/commcheck/plan.c",
    "src/jobs/commcheck/observe.c",
    "src/jobs/commcheck/dryrun.c",
    "src/providers/endpoint_probe.c",
    "src/rules/marshal.c",
    "src/rules/pattern.c",
    "src/rules/engine.c",
    "src/rules/reload.c",
    "src/providers/http.c",
    "src/providers/curl_shared.c",
    "src/providers/twilio.c",
    "src/providers/sendgrid.c",
    "src/providers/smtp.c",
    "src/providers/signature.c",
    "src/outbox/enqueue.c",
    "src/outbox/entry.c",
    "src/outbox/intent.c",
    "src/outbox/claim.c",
    "src/outbox/dispatch.c",
    "src/outbox/deliver.c",
    "src/jobs/outbox.c",
    "src/core/metrics.c",
    "src/http/answer.c",
    "src/http/server.c",
    "src/http/webhook.c",
    "src/http/journal_late.c",
    "src/http/probes.c",
    "src/http/checker.c",
    "src/http/exposition.c",
};

const system_libs = [_][]const u8{ "libmongoc-1.0", "libbson-1.0", "lua5.4", "libcurl", "openssl", "libmicrohttpd" };

/// Unit tests: tests/unit/test_<name>.c, one executable each.
const unit_tests = [_][]const u8{ "cron", "config", "clock", "scheduler", "log", "rules", "pattern", "stall", "marshal", "signature", "http", "smtp", "outbox", "clients", "enqueue", "cabundle", "msgstatus", "metrics", "commcheck", "tz", "sla_calendar", "redis" };

pub fn build(b: *std.Build) void {
    const static = b.option(bool, "static", "Release build: one static x86_64-linux-musl (or -Dtarget=aarch64-linux-musl) binary (vendor/)") orelse false;
    const target = if (static) vendor.target(b) else b.standardTargetOptions(.{});
    const optimize = b.standardOptimizeOption(.{});
    const sanitize = b.option(bool, "sanitize", "Build with AddressSanitizer and UBSan") orelse false;
    if (static and sanitize) std.debug.panic("-Dstatic and -Dsanitize do not mix (ASan comes from the system's glibc toolchain)", .{});
    if (static) static_libs = vendor.build(b, target) else dev_hiredis = devHiredis(b, target);

    var flags: std.ArrayList([]const u8) = .empty;
    flags.appendSlice(b.allocator, &c_flags) catch @panic("OOM");
    if (sanitize) flags.appendSlice(b.allocator, &.{ "-fsanitize=address" }) catch @panic("OOM");
    // Test seams (src/core/seam.h) in development builds only: the release
    // binary carries no test hook.
    if (!static) flags.appendSlice(b.allocator, &.{ "-DSD_TEST_SEAMS" }) catch @panic("OOM");

    // The sanitized build needs gcc's libasan preloaded to start at all: it gets folders of
    // its own, so the plain binary in bin/ is never replaced by one that cannot run alone.
    const dir = struct {
        fn of(bb: *std.Build, san: bool, sub: []const u8) std.Build.InstallDir {
            return .{ .custom = if (san) bb.fmt("sanitize/{s}", .{sub}) else sub };
        }
    }.of;

    const exe = b.addExecutable(.{
        .name = "supportd",
        .root_module = cModule(b, target, optimize, sanitize, flags.items, &.{"src/main.c"}),
    });
    const exe_install = b.addInstallArtifact(exe, .{ .dest_dir = .{ .override = dir(b, sanitize, "bin") } });
    b.getInstallStep().dependOn(&exe_install.step);

    // scripts/bench patterns: our Lua pattern matcher against Lua's own.
    const bench = b.addExecutable(.{
        .name = "bench_patterns",
        .root_module = cModule(b, target, optimize, sanitize, flags.items, &.{"tests/bench/bench_patterns.c"}),
    });
    const bench_install = b.addInstallArtifact(bench, .{ .dest_dir = .{ .override = dir(b, sanitize, "bench") } });
    b.step("bench", "Build the benchmark programs into <prefix>/bench (scripts/bench runs them)").dependOn(&bench_install.step);

    const run_cmd = b.addRunArtifact(exe);
    if (b.args) |args| run_cmd.addArgs(args);
    b.step("run", "Run supportd with the given arguments").dependOn(&run_cmd.step);

    const test_step = b.step("test", "Build and run the cmocka unit tests");
    const unit_step = b.step("unit", "Build the cmocka unit tests into zig-out/test (-Dsanitize: zig-out/sanitize/test; scripts/test runs them)");
    const asan_preload = if (sanitize) asanRuntime(b) else "";
    for (unit_tests) |name| {
        const src = b.fmt("tests/unit/test_{s}.c", .{name});
        const mod = cModule(b, target, optimize, sanitize, flags.items, &.{src});
        mod.linkSystemLibrary("cmocka", .{});
        const t = b.addExecutable(.{ .name = b.fmt("test_{s}", .{name}), .root_module = mod });
        const install = b.addInstallArtifact(t, .{ .dest_dir = .{ .override = dir(b, sanitize, "test") } });
        unit_step.dependOn(&install.step);
        const run = b.addRunArtifact(t);
        // The ASan runtime must be the first library loaded.
        if (sanitize) run.setEnvironmentVariable("LD_PRELOAD", asan_preload);
        run.step.dependOn(&install.step);
        test_step.dependOn(&run.step);
    }
}

fn cModule(
    b: *std.Build,
    target: std.Build.ResolvedTarget,
    optimize: std.builtin.OptimizeMode,
    sanitize: bool,
    flags: []const []const u8,
    extra: []const []const u8,
) *std.Build.Module {
    const mod = b.createModule(.{
        .target = target,
        .optimize = optimize,
        .link_libc = true,
        // Zig's default for C in Debug is UBSan in trap mode; with -Dsanitize
        // the runtime reports instead, naming the file and line.
        .sanitize_c = if (sanitize) .full else null,
    });
    mod.addIncludePath(b.path("src"));
    mod.addCSourceFiles(.{ .files = &core_sources, .flags = flags });
    mod.addCSourceFiles(.{ .files = extra, .flags = flags });
    // `supportd version` names the Debian source package of each library built from one.
    var version_flags: std.ArrayList([]const u8) = .empty;
    version_flags.appendSlice(b.allocator, flags) catch @panic("OOM");
    const vendored: []const []const u8 = if (static_libs != null)
        &.{ "lua", "hiredis", "openssl", "curl", "mongoc", "microhttpd", "tzdata" }
    else
        &.{"hiredis"};
    for (vendored) |name| version_flags.append(b.allocator, pins.vendorMacro(b, name)) catch @panic("OOM");
    mod.addCSourceFiles(.{ .files = &.{"src/cli/version.c"}, .flags = version_flags.items });
    if (static_libs) |libs| libs.link(mod) else {
        const h = dev_hiredis.?;
        mod.addSystemIncludePath(h.include);
        mod.linkLibrary(h.ssl);
        mod.linkLibrary(h.lib);
        for (system_libs) |lib| mod.linkSystemLibrary(lib, .{});
    }
    mod.linkSystemLibrary("pthread", .{});
    if (sanitize) linkAsan(b, mod);
    return mod;
}

/// hiredis for the development build, from the source scripts/vendor-fetch unpacks (it runs
/// first on every build and returns at once when the source is there), optimized like
/// the release build's, without sanitizers, against the system's OpenSSL headers.
fn devHiredis(b: *std.Build, target: std.Build.ResolvedTarget) hiredis.Hiredis {
    const fetch = b.addSystemCommand(&.{ b.pathFromRoot("scripts/vendor-fetch"), "-q", "hiredis" });
    fetch.setCwd(b.path("."));
    fetch.setName("vendor-fetch hiredis");
    const h = hiredis.build(b, pins.source(b, "hiredis"), target, .ReleaseFast, null);
    h.lib.step.dependOn(&fetch.step);
    h.ssl.step.dependOn(&fetch.step);
    return h;
}

/// Zig ships no AddressSanitizer runtime; link the system C compiler's
/// (scripts/setup installs gcc). Its ABI is the one clang's instrumentation
/// targets (__asan_version_mismatch_check_v8).
/// At run time it must come first: scripts/test sets LD_PRELOAD to it.
fn linkAsan(b: *std.Build, mod: *std.Build.Module) void {
    mod.addObjectFile(.{ .cwd_relative = asanRuntime(b) });
    // What gcc's -fsanitize=address links too: starts ASan from .preinit_array,
    // before any library constructor. Started later (inside libp11-kit's), it
    // corrupts a glibc locale lock and the process hangs in strerror at exit.
    const preinit = std.mem.trim(u8, b.run(&.{ "gcc", "-print-file-name=libasan_preinit.o" }), " \n");
    mod.addObjectFile(.{ .cwd_relative = preinit });
}

fn asanRuntime(b: *std.Build) []const u8 {
    return std.mem.trim(u8, b.run(&.{ "gcc", "-print-file-name=libasan.so" }), " \n");
}
