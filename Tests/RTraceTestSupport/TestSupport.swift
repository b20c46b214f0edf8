import Foundation

/// Deterministic pseudo-random numbers for generated test data (SplitMix64).
public struct TestRNG {
    public var state: UInt64
    public init(_ seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in `0 ..< n`.
    public mutating func int(_ n: Int) -> Int { Int(next() % UInt64(n)) }
    /// Uniform in `[0, 1)` with 24 bits.
    public mutating func float() -> Float { Float(next() >> 40) / Float(1 << 24) }
    /// Uniform in `[0, 1)` with 53 bits.
    public mutating func unit() -> Double { Double(next() >> 11) / Double(1 << 53) }
}

/// The repository root, where `samples/` lives.
public let repoRoot: String = {
    var u = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { u.deleteLastPathComponent() }
    return u.path
}()

/// A path for `name` in a temporary directory private to this test process.
public func tempPath(_ name: String) -> String {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("rtrace-tests-\(getpid())")
    try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    return dir.appendingPathComponent(name).path
}

/// The built `rtrace` executable: `RTRACE_BIN`, else the one beside the test bundle (the build
/// folder of `swift build --build-tests`).
public let rtraceBinary: String = {
    if let p = ProcessInfo.processInfo.environment["RTRACE_BIN"], !p.isEmpty { return p }
    let dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    return dir.appendingPathComponent("rtrace").path
}()

/// `make test` (hence CI) sets RTRACE_NO_SKIP=1: a test whose precondition is missing then runs, and
/// fails, instead of being skipped. Nothing is skipped in CI.
public let noSkip = ProcessInfo.processInfo.environment["RTRACE_NO_SKIP"] == "1"

/// Whether the tests that run the `rtrace` executable are enabled: it is built, or RTRACE_NO_SKIP=1 (then a
/// missing executable fails them).
public let binaryTestsEnabled = noSkip || FileManager.default.isExecutableFile(atPath: rtraceBinary)

/// Runs the `rtrace` executable with `arguments` (its output goes through temporary files, so a
/// large one cannot block it): the exit status and what it printed.
public func runRTrace(_ arguments: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
    let out = tempPath("run-\(UUID().uuidString).out"), err = tempPath("run-\(UUID().uuidString).err")
    FileManager.default.createFile(atPath: out, contents: nil)
    FileManager.default.createFile(atPath: err, contents: nil)
    defer { try? FileManager.default.removeItem(atPath: out); try? FileManager.default.removeItem(atPath: err) }
    let p = Process()
    p.executableURL = URL(fileURLWithPath: rtraceBinary)
    p.arguments = arguments
    p.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: out))
    p.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: err))
    try p.run()
    p.waitUntilExit()
    return (p.terminationStatus, (try? String(contentsOfFile: out, encoding: .utf8)) ?? "", (try? String(contentsOfFile: err, encoding: .utf8)) ?? "")
}
