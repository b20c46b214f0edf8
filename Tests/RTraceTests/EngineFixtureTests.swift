import RTraceTestSupport
import Foundation
import Testing

@testable import RTrace

/// The conformance fixtures of Tests/fixtures/engines: what vLLM, SGLang, NeMo RL and verl send,
/// written by the engines' own serialisation code, and the ground truth of every record
/// (MANIFEST.md describes both).
private let fixtures = "\(repoRoot)/Tests/fixtures/engines"

private struct Truth {
    struct Record {
        var uid: String
        var tokens: [Int32]
        var tokensSent: Bool
        var promptLength: Int
        var start: Int
        var rows: Int
        var ids: [UInt16]
        var missing: [Int]
    }

    var model: ModelGeometry
    var records: [Record]
    var neverRouted: Int

    init(_ name: String) throws {
        let o = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(fixtures)/\(name).truth.json"))) as! [String: Any]
        let m = o["model"] as! [String: Any]
        model = ModelGeometry(name: "fixture", numLayers: m["num_layers"] as! Int, numExperts: m["num_experts"] as! Int,
                              topK: m["top_k"] as! Int, layerMap: m["layer_map"] as? [Int])
        records = (o["records"] as! [[String: Any]]).map { r in
            let ids = (r["topk_ids"] as! [[[Int]]]).flatMap { $0.flatMap { $0 } }.map { $0 == -1 ? TraceRecord.missing : UInt16($0) }
            return Record(uid: r["uid"] as! String, tokens: (r["tokens"] as! [Int]).map(Int32.init),
                          tokensSent: r["tokens_sent"] as! Bool, promptLength: r["prompt_len"] as! Int,
                          start: r["start"] as! Int, rows: r["rows"] as! Int, ids: ids, missing: r["missing_positions"] as! [Int])
        }
        neverRouted = (o["never_routed"] as! [[String: Any]]).count
    }
}

/// Compares imported records with the ground truth, in order: every id at its (sequence,
/// position, decoder layer, slot), the tokens, the start, no filler or zero-filled row.
private func expectMatches(_ got: [TraceRecord], _ t: Truth, _ name: String, uids: Bool = true) {
    #expect(got.count == t.records.count, "\(name): \(got.count) records, truth has \(t.records.count)")
    for (g, w) in zip(got, t.records) {
        let at = "\(name) \(w.uid)"
        if uids { #expect(g.uid == w.uid, "\(at)") }
        #expect(g.start == w.start && g.rowCount == w.rows, "\(at): start \(g.start) rows \(g.rowCount), truth \(w.start) \(w.rows)")
        #expect(g.expertIDs == w.ids, "\(at): ids differ")
        #expect(g.tokens == (w.tokensSent ? w.tokens : []), "\(at): tokens")
        // Without tokens a payload may not tell the prompt length (a bare NeMo RL string): then 0.
        if w.tokensSent || g.promptLength != 0 {
            #expect(g.promptLength == w.promptLength, "\(at): prompt length \(g.promptLength), truth \(w.promptLength)")
        }
        let missing = (0..<g.rowCount).filter { !g.isPresent(row: $0, layer: 0) }.map { $0 + g.start }
        #expect(missing == w.missing, "\(at): missing positions \(missing), truth \(w.missing)")
    }
}

private func lines(_ name: String) throws -> JSONLines { try JSONLines(path: "\(fixtures)/\(name).jsonl") }

@Suite("engine conformance fixtures (made by the engines' own code)")
struct EngineFixtureTests {
    @Test("vLLM ≥ 0.22 (0.27, 0.33): request outputs and the OpenAI-compatible server's completions and chat",
          arguments: ["vllm-0.33.0-request-outputs", "vllm-0.27.0-request-outputs", "vllm-0.33.0-openai-completions",
                      "vllm-0.33.0-openai-chat"])
    func vllmNew(_ name: String) throws {
        let t = try Truth(name)
        expectMatches(try EngineImport.vllm(lines(name), settings: EngineImportSettings(model: t.model)), t, name)
    }

    @Test("vLLM 0.21: prompt_routed_experts plus generated rows; prefix-cached (all-zero) rows become missing",
          arguments: ["vllm-0.21.0-request-outputs", "vllm-0.21.0-openai-completions"])
    func vllm021(_ name: String) throws {
        let t = try Truth(name)
        expectMatches(try EngineImport.vllm(lines(name), settings: EngineImportSettings(model: t.model)), t, name)
    }

    @Test("SGLang 0.5.23: /generate objects and JSON arrays, the start from seq_len - 1 - rows; OpenAI sglext",
          arguments: ["sglang-0.5.23-generate", "sglang-0.5.23-openai-completions"])
    func sglang(_ name: String) throws {
        let t = try Truth(name)
        expectMatches(try EngineImport.sglang(lines(name), settings: EngineImportSettings(model: t.model)), t, name)
    }

    @Test("NeMo RL: nrlre1 wire strings (int8, int16, int32) without their filler row; the right-padded batch")
    func nemo() throws {
        let t = try Truth("nemo-rl-wire")
        var s = EngineImportSettings(model: t.model)
        s.uidPrefix = "nemo-"
        expectMatches(try EngineImport.nemoRL(lines("nemo-rl-wire"), settings: s), t, "nemo-rl-wire")
        let b = try Truth("nemo-rl-batch")
        let got = try EngineImport.nemoRLBatch(Npz.read(path: "\(fixtures)/nemo-rl-batch.npz"), settings: EngineImportSettings(model: b.model),
                                               file: "nemo-rl-batch.npz")
        expectMatches(got, b, "nemo-rl-batch", uids: false)
    }

    @Test("verl 0.9.1: the padded batch (rows end at the last generated token) and AgentLoopOutput samples",
          arguments: ["verl-0.9.1-batch", "verl-0.9.1-agent-loop-outputs"])
    func verl(_ name: String) throws {
        let t = try Truth(name)
        let got = try EngineImport.verl(Npz.read(path: "\(fixtures)/\(name).npz"), settings: EngineImportSettings(model: t.model),
                                        promptWidth: nil, file: "\(name).npz")
        expectMatches(got, t, name, uids: false)
    }

    @Test("rtrace import of each fixture gives the same records as the library; diff of the NeMo RL import against its truth: 0 flips",
          .enabled(if: binaryTestsEnabled))
    func cli() throws {
        let t = try Truth("nemo-rl-wire")
        let m = t.model
        let geo = ["--num-layers", "\(m.numLayers)", "--layer-map", m.layerMap.map(String.init).joined(separator: ","),
                   "--num-experts", "\(m.numExperts)", "--top-k", "\(m.topK)"]
        for (from, name, ext) in [("vllm", "vllm-0.33.0-openai-chat", "jsonl"), ("vllm", "vllm-0.21.0-request-outputs", "jsonl"),
                                  ("sglang", "sglang-0.5.23-generate", "jsonl"), ("nemo", "nemo-rl-wire", "jsonl"),
                                  ("nemo", "nemo-rl-batch", "npz"), ("verl", "verl-0.9.1-batch", "npz")] {
            let out = tempPath("\(name).rtrace")
            let r = try runRTrace(["import", "--from", from, "\(fixtures)/\(name).\(ext)", "-o", out, "--uid-prefix", "nemo-"] + geo)
            #expect(r.status == 0, "\(name): \(r.stderr)")
            let truth = try Truth(name)
            expectMatches(try TraceReader(path: out).readAll(), truth, "rtrace import \(name)", uids: from != "verl" && ext != "npz")
        }
        // A training trace of the same sequences that routes the last token too: the import has no row for it.
        let train = tempPath("nemo-train.rtrace")
        let w = try TraceWriter(path: train, header: TraceHeader(engine: EngineInfo(name: "megatron", role: .train), model: m))
        for r in t.records where r.tokensSent {
            try w.append(TraceRecord(uid: r.uid, tokens: r.tokens, promptLength: r.promptLength, rowCount: r.rows + 1,
                                     layers: m.moeLayers, topK: m.topK, expertIDs: r.ids + [UInt16](repeating: 3, count: m.moeLayers).flatMap { [$0, 7] }))
        }
        try w.close()
        let d = try runRTrace(["diff", tempPath("nemo-rl-wire.rtrace"), train, "--json"])
        #expect(d.status == 0, "\(d.stderr)")
        let j = try JSONSerialization.jsonObject(with: Data(d.stdout.utf8)) as! [String: Any]
        let matched = j["matched"] as! [String: Any]
        #expect(j["flip_rate"] as? Double == 0, "\(d.stdout.prefix(400))")
        #expect(matched["rows_only_b"] as? Int == t.records.filter(\.tokensSent).count)
        #expect(matched["rows"] as? Int == t.records.filter(\.tokensSent).map(\.rows).reduce(0, +))
    }
}
