import Foundation
import RTrace
import Testing

/// The repository root (samples live there).
let repoRoot: String = {
    var u = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { u.deleteLastPathComponent() }
    return u.path
}()

/// The built `rtrace` executable: `RTRACE_BIN`, else the one beside this test bundle.
let rtraceBinary: String = {
    if let p = ProcessInfo.processInfo.environment["RTRACE_BIN"], !p.isEmpty { return p }
    let dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    return dir.appendingPathComponent("rtrace").path
}()

/// What a finished process printed and returned.
struct ProcessResult {
    var status: Int32
    var stdout: Data
    var stderr: String
    var text: String { String(decoding: stdout, as: UTF8.self) }
}

/// Runs a shell pipeline with `$RT` bound to the rtrace binary, from the repository root.
func shell(_ script: String) throws -> ProcessResult {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/bin/sh")
    p.arguments = ["-c", script]
    p.currentDirectoryURL = URL(fileURLWithPath: repoRoot)
    var env = ProcessInfo.processInfo.environment
    env["RT"] = rtraceBinary
    p.environment = env
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    try p.run()
    // Read both pipes before waiting, so a large output cannot block the child.
    let errData = SendableBox<Data>()
    let errReader = Thread { errData.value = err.fileHandleForReading.readDataToEndOfFile() }
    errReader.start()
    let o = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    while errData.value == nil { usleep(1000) }
    return ProcessResult(status: p.terminationStatus, stdout: o, stderr: String(decoding: errData.value!, as: UTF8.self))
}

/// A value handed from a reader thread back to the test.
final class SendableBox<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: T?
    var value: T? {
        get { lock.lock(); defer { lock.unlock() }; return stored }
        set { lock.lock(); stored = newValue; lock.unlock() }
    }
}

func tempFile(_ name: String) -> String {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("rtrace-cli-\(getpid())")
    try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    return dir.appendingPathComponent(name).path
}

let realSample = "samples/qwen3moe-L6-E32-k4"

@Suite("rtrace as a process: pipes, exit status, errors")
struct CLIProcessTests {
    @Test("import -o - | info --json - reports what the library reads from the golden file")
    func importPipeInfo() throws {
        let r = try shell("$RT import --from npz \(realSample)/rollout.npz -o - | $RT info --json -")
        #expect(r.status == 0, "\(r.stderr)")
        let json = try #require(try JSONSerialization.jsonObject(with: r.stdout) as? [String: Any])
        let golden = try TraceReader(path: "\(repoRoot)/\(realSample)/rollout.rtrace")
        let records = try golden.readAll()
        #expect(json["sequences"] as? Int == records.count)
        #expect(json["rows"] as? Int == records.reduce(0) { $0 + $1.rowCount })
        #expect(json["complete"] as? Bool == true)
        let model = try #require((json["header"] as? [String: Any])?["model"] as? [String: Any])
        #expect(model["num_experts"] as? Int == golden.header.model.numExperts)
        #expect(model["top_k"] as? Int == golden.header.model.topK)
    }

    @Test("import | export through pipes gives back every npz array bit-exactly")
    func pipeRoundTrip() throws {
        let out = tempFile("roundtrip.npz")
        let r = try shell("cat samples/synthetic-E300-dense.npz | $RT import --from npz - -o - --engine synthetic --num-layers 8 --layer-map 2-7 --num-experts 300 --chunk-bytes 1024 | $RT export --to npz - -o \(out)")
        #expect(r.status == 0, "\(r.stderr)")
        let got = try Npz.read(path: out)
        let want = try Npz.read(path: "\(repoRoot)/samples/synthetic-E300-dense.npz")
        #expect(Set(got.keys) == Set(want.keys))
        for (name, w) in want {
            let g = try #require(got[name])
            #expect(g.shape == w.shape, "\(name)")
            #expect(g.data == w.data, "\(name)")
        }
    }

    @Test("view --format jsonl emits one JSON object per record, filtered by --uid")
    func viewJSONLines() throws {
        let r = try shell("$RT view \(realSample)/rollout.rtrace --uid 3 --layer 2")
        #expect(r.status == 0, "\(r.stderr)")
        let lines = r.text.split(separator: "\n")
        #expect(lines.count == 1)
        let obj = try #require(try JSONSerialization.jsonObject(with: Data(lines[0].utf8)) as? [String: Any])
        #expect(obj["uid"] as? String == "3")
        let golden = try TraceReader(path: "\(repoRoot)/\(realSample)/rollout.rtrace")
        let rec = try #require(try golden.readAll().first { $0.uid == "3" })
        #expect(obj["tokens"] as? [Int] == rec.tokens.map(Int.init))
    }

    @Test("a head that closes the pipe early ends view quietly with status 0")
    func closedPipeIsQuiet() throws {
        let r = try shell("{ $RT view \(realSample)/rollout.rtrace --format tsv; echo \"rc=$?\" >&2; } | head -1")
        #expect(r.stderr == "rc=0\n", "\(r.stderr)")
        #expect(r.text.split(separator: "\n").count == 1)
    }

    @Test("check: 0 on a clean file; 1 naming the byte offset on a truncated one; --salvage keeps every complete record")
    func checkTruncated() throws {
        let clean = try shell("$RT check --quiet samples/synthetic-E300-dense.rtrace")
        #expect(clean.status == 0, "\(clean.stderr)")

        let src = try Data(contentsOf: URL(fileURLWithPath: "\(repoRoot)/samples/synthetic-E300-dense.rtrace"))
        let cut = tempFile("cut.rtrace"), salvaged = tempFile("salvaged.rtrace")
        try src.prefix(src.count * 2 / 3).write(to: URL(fileURLWithPath: cut))
        let bad = try shell("$RT check \(cut) --salvage \(salvaged)")
        #expect(bad.status == 1)
        #expect((bad.text + bad.stderr).contains("offset"), "\(bad.text)\(bad.stderr)")

        let recovered = try TraceReader(path: salvaged).readAll()
        let original = try TraceReader(path: "\(repoRoot)/samples/synthetic-E300-dense.rtrace").readAll()
        #expect(!recovered.isEmpty)
        #expect(recovered.count < original.count)
        for r in recovered {
            #expect(original.contains(r), "salvaged record \(r.uid) differs from the original")
        }
    }

    @Test("errors name the file; bad arguments exit 64")
    func errors() throws {
        let missing = try shell("$RT info /nonexistent/x.rtrace")
        #expect(missing.status == 1)
        #expect(missing.stderr.contains("/nonexistent/x.rtrace"))

        let notTrace = try shell("$RT info \(realSample)/rollout.npz")
        #expect(notTrace.status == 1)
        #expect(notTrace.stderr.contains("rollout.npz"))
        #expect(notTrace.stderr.lowercased().contains("zip") || notTrace.stderr.lowercased().contains("npz"), "\(notTrace.stderr)")

        let usage = try shell("$RT view --format xml \(realSample)/rollout.rtrace")
        #expect(usage.status == 64)
    }
}
