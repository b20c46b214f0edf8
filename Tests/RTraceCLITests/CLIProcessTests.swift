import Foundation
import RTrace
import RTraceTestSupport
import Testing


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
        let out = tempPath("cli-roundtrip.npz")
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

    /// Missing rows, u16 ids, bf16 weights, rewards, attrs; and real routing with f16 weights and logits.
    @Test("view --logits: every field of every JSON line equals what the reader returns",
          arguments: ["samples/synthetic-E300-dense.rtrace", "\(realSample)/rollout.rtrace"])
    func viewJSONLinesEveryField(path: String) throws {
        let r = try shell("$RT view \(path) --logits")
        #expect(r.status == 0, "\(r.stderr)")
        let reader = try TraceReader(path: "\(repoRoot)/\(path)")
        let records = try reader.readAll()
        let lines = r.text.split(separator: "\n")
        #expect(lines.count == records.count)
        /// A float as the JSON holds it: a number, or "nan"/"inf"/"-inf".
        func float(_ v: Any?) -> Float? {
            if let d = v as? Double { return Float(d) }
            if let i = v as? Int { return Float(i) }
            return (v as? String).flatMap { Float($0) }
        }
        func same(_ a: Float?, _ b: Float) -> Bool { a.map { $0 == b || ($0.isNaN && b.isNaN) } ?? false }
        for (line, rec) in zip(lines, records) {
            let o = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            #expect(o["uid"] as? String == rec.uid)
            #expect((o["group"] as? String) == rec.group)
            #expect(o["tokens"] as? [Int] == rec.tokens.map(Int.init))
            #expect(o["prompt_len"] as? Int == rec.promptLength)
            #expect(o["start"] as? Int == rec.start)
            #expect((o["reward"] as? NSNumber)?.doubleValue == rec.reward)
            let lps = try #require(o["logprobs"] as? [Any])
            #expect(lps.count == rec.logprobs.count && zip(lps, rec.logprobs).allSatisfy { same(float($0), $1) })
            let L = rec.layers, k = rec.topK, E = reader.header.model.numExperts
            let ids = try #require(o["topk_ids"] as? [[[Int]]])
            let ws = try #require(o["topk_weights"] as? [[[Any]]])
            #expect((o["router_logits"] == nil) == (rec.logits == nil))
            let gs = o["router_logits"] as? [[[Any]]]
            #expect(ids.count == rec.rowCount)
            for row in 0..<rec.rowCount {
                for l in 0..<L {
                    let b = (row * L + l) * k
                    #expect(ids[row][l] == (0..<k).map { rec.expertIDs[b + $0] == TraceRecord.missing ? -1 : Int(rec.expertIDs[b + $0]) })
                    #expect(zip(ws[row][l], (0..<k).map { rec.weights![b + $0] }).allSatisfy { same(float($0), $1) })
                    if let gs, let g = rec.logits {
                        #expect(gs[row][l].count == E)
                        #expect(zip(gs[row][l], (0..<E).map { g[(row * L + l) * E + $0] }).allSatisfy { same(float($0), $1) })
                    }
                }
            }
            if let a = rec.attributes {
                let want = try JSONSerialization.jsonObject(with: Data(a.utf8)) as? NSDictionary
                #expect((o["attrs"] as? NSDictionary) == want)
            } else {
                #expect(o["attrs"] is NSNull)
            }
        }
    }

    @Test("view --format tsv: one line per (row, layer) holding the record's ids (-1 missing) and weights")
    func viewTSV() throws {
        let path = "samples/synthetic-E300-dense.rtrace"  // missing rows, bf16 weights, a layer map with dense layers
        let r = try shell("$RT view \(path) --format tsv")
        #expect(r.status == 0, "\(r.stderr)")
        let reader = try TraceReader(path: "\(repoRoot)/\(path)")
        let records = try reader.readAll()
        let map = reader.header.model.layerMap
        var want = ["uid\tposition\tlayer\texperts\tweights"]
        var sawMissing = false, sawWeights = false
        for rec in records {
            let L = rec.layers, k = rec.topK
            for row in 0..<rec.rowCount {
                for l in 0..<L {
                    let b = (row * L + l) * k
                    let ids = (0..<k).map { rec.expertIDs[b + $0] == TraceRecord.missing ? "-1" : String(rec.expertIDs[b + $0]) }
                    sawMissing = sawMissing || ids[0] == "-1"
                    let ws = rec.weights.map { w in (0..<k).map { "\(w[b + $0])" }.joined(separator: ",") } ?? ""
                    sawWeights = sawWeights || !ws.isEmpty
                    want.append("\(rec.uid)\t\(rec.start + row)\t\(map[l])\t\(ids.joined(separator: ","))\t\(ws)")
                }
            }
        }
        #expect(sawMissing && sawWeights, "the sample should exercise missing rows and weights")
        let got = r.text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        #expect(got.last == "")
        #expect(Array(got.dropLast()) == want)
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
        let cut = tempPath("cli-cut.rtrace"), salvaged = tempPath("cli-salvaged.rtrace")
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

    @Test("info on a truncated file shows what its complete chunks hold and where it ends")
    func infoTruncated() throws {
        let src = try Data(contentsOf: URL(fileURLWithPath: "\(repoRoot)/samples/synthetic-E300-dense.rtrace"))
        let cut = tempPath("cli-info-cut.rtrace")
        try src.prefix(src.count * 2 / 3).write(to: URL(fileURLWithPath: cut))
        let r = try shell("$RT info --json \(cut)")
        #expect(r.status == 0, "\(r.stderr)")
        let json = try #require(try JSONSerialization.jsonObject(with: r.stdout) as? [String: Any])
        #expect(json["complete"] as? Bool == false)
        let why = try #require(json["incomplete_reason"] as? String)
        #expect(why.contains("offset"), "\(why)")
        let chunks = try #require(json["chunks"] as? Int)
        #expect(chunks > 0 && chunks < 8)  // the sample has 8 chunks; only complete ones are counted
        let text = try shell("$RT info \(cut)")
        #expect(text.text.contains("INCOMPLETE"))
    }

    @Test("import --from sglang reads JSON lines from a pipe; a bad line is named")
    func importSGLangPipe() throws {
        // Two responses of 3 tokens (2 rows) for a 2-layer, top-2 model, ids base64 int32.
        func b64(_ v: [Int32]) -> String { Data(v.flatMap { x in (0..<4).map { UInt8(truncatingIfNeeded: x >> (8 * $0)) } }).base64EncodedString() }
        let lines = [
            #"{"input_ids":[1,2],"output_ids":[3],"meta_info":{"id":"a","routed_experts":"\#(b64([0, 1, 2, 3, 1, 0, 3, 2]))"}}"#,
            #"{"input_ids":[1],"output_ids":[5,6],"meta_info":{"id":"b","routed_experts":"\#(b64([4, 5, 6, 7, 5, 4, 7, 6]))"}}"#,
        ]
        let input = tempPath("cli-sg.jsonl")
        try (lines.joined(separator: "\n") + "\n").write(toFile: input, atomically: true, encoding: .utf8)
        let r = try shell("cat \(input) | $RT import --from sglang - --num-layers 2 --num-experts 8 --top-k 2 -o - | $RT view - --format jsonl")
        #expect(r.status == 0, "\(r.stderr)")
        let recs = r.text.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        #expect(recs.map { $0["uid"] as? String } == ["a", "b"])
        #expect(recs[1]["prompt_len"] as? Int == 1)
        #expect(recs[1]["topk_ids"] as? [[[Int]]] == [[[4, 5], [6, 7]], [[5, 4], [7, 6]]])

        let bad = tempPath("cli-sg-bad.jsonl")
        try (lines[0] + "\n{not json\n").write(toFile: bad, atomically: true, encoding: .utf8)
        let e = try shell("$RT import --from sglang \(bad) --num-layers 2 --num-experts 8 --top-k 2 -o /dev/null")
        #expect(e.status == 1)
        #expect(e.stderr.contains("sg-bad.jsonl") && e.stderr.contains("line 2"), "\(e.stderr)")
        let noGeometry = try shell("$RT import --from sglang \(input) -o /dev/null")
        #expect(noGeometry.status == 64)
        #expect(noGeometry.stderr.contains("--num-experts"))
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
