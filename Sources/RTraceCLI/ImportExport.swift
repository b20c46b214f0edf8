import ArgumentParser
import RTrace

/// `rtrace import`: arrays engines already dump → a trace.
struct Import: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import",
        abstract: "Convert routing that engines dump (npz, npy, SGLang, vLLM, NeMo RL, verl) into a trace.",
        discussion: """
            npz arrays: topk_ids [seqs, rows, layers, k] or [rows, layers, k] (int32/int16/uint8, -1 = missing),
            optional tokens [seqs, T], topk_weights (shape of ids; float16, float32 or uint16 bf16 bits),
            router_logits [seqs, rows, layers, experts], logprobs [seqs, n] (last n tokens), prompt_len
            (scalar or per sequence). Sequence i gets uid i (or --uid-prefix + i). With --layer-map, a layer
            axis of all decoder layers is reduced to the MoE layers.
            npy: a single topk_ids array.
            npz and npy stream: memory is one sequence and one chunk, whatever the dump's size. An npz from
            standard input or a pipe is first copied to a temporary file in $TMPDIR (a zip's directory is at its
            end; it needs the npz's size of free disk). A member whose .npy header disagrees with the zip
            directory, or that holds more or less than it declares, is refused naming the member.
            The engine layouts (one response or output per line; each record is written as it is parsed, so memory
            stays at one line plus one chunk). Rows are positions start .. T-2 of a T-token sequence: no engine routes
            the last token, and no filler, padding or zero fill is imported.
            sglang  SGLang 0.5.x (checked: 0.5.23). /generate responses, an object or a JSON array (n > 1, batch):
                    meta_info.routed_experts = base64 int32 [seq_len - 1 - start, all layers (dense 0), k]; tokens
                    prompt_token_ids (return_prompt_token_ids) + output_ids; start = seq_len - 1 - rows (the request's
                    routed_experts_start_len is not echoed; seq_len from meta_info prompt_tokens + completion_tokens
                    without tokens). OpenAI-compatible responses: sglext.routed_experts (the first choice's only; the
                    others are skipped with a notice) or choices[i].meta_info.routed_experts (return_meta_info).
            vllm    vLLM >= 0.22 (checked: 0.27, 0.33). Request outputs dumped as JSON: prompt_token_ids,
                    outputs[i].token_ids and outputs[i].routed_experts [T - 1 - start, all layers (dense 0), k]
                    uint8/uint16, nested lists or base64 .npy; start = T - 1 - rows (routed_experts_prompt_start is not
                    echoed). OpenAI-compatible responses: choices[i].routed_experts = base64 .npy, prompt_token_ids and
                    token_ids with return_token_ids (chat: prompt_token_ids at the response level).
                    vLLM 0.21: prompt_routed_experts [prompt_len, layers, k] + routed_experts [gen_len - 1, layers, k]
                    int16, rows from 0; rows of prefix-cached positions (0 in every slot, or the first
                    num_cached_tokens) and -1 rows are missing.
            nemo    NeMo RL (checked: 7ea279a, 2026-08). Lines of nrlre1:<int8|int16|int32>:<T>x<L>x<K>:<base64>
                    (bare, or an object's routed_experts with uid, tokens, prompt_len, start, group, logprobs,
                    reward); row T-1, the filler arange(K), is dropped. An .npz: the in-process generate() batch
                    (routed_experts [B, padded_len, L, K], output_ids, unpadded_sequence_lengths, input_lengths).
            verl    verl 0.9 (checked: 0.9.1). An .npz: routed_experts [batch, seq, layers, k], attention_mask and
                    input_ids [batch, seq] (prompt left-padded to --prompt-width columns, or the width of a prompts
                    array); with response_mask the rows end at the last generated token. Or AgentLoopOutput samples:
                    <i>/prompts, <i>/responses, <i>/response_mask, <i>/routed_experts.
            Record uids: <request_id>/<index> (vLLM; OpenAI: <id>/<index>), meta_info.id or the response id
            (SGLang), the line's uid (NeMo RL); otherwise --uid-prefix + ordinal.
            A layout that does not match is an error naming the line, the byte offset, what was found and what
            each supported release sends. The logprobs column follows the first record (--logprobs).
            The engine layouts carry no geometry: pass --num-layers (and --layer-map when some layers are dense),
            --num-experts and --top-k (verl: --num-experts).
            Example: rtrace import --from npz rollout.npz --engine sglang --role rollout -o - | rtrace info -
            Example: rtrace import --from sglang responses.jsonl --num-layers 48 --num-experts 128 --top-k 8 -o rollout.rtrace
            """)

    enum Source: String, ExpressibleByArgument, CaseIterable { case npz, npy, sglang, vllm, nemo, verl }

    @Option(help: "Input format.")
    var from: Source

    @Argument(help: "The input file (- for standard input).")
    var input: String

    @Option(name: .shortAndLong, help: "The output trace (- for standard output).")
    var output: String

    @Option(help: "Engine name (default: the --from format for engine formats, else unknown).") var engine: String?
    @Option(help: "Engine version.") var engineVersion = ""
    @Option(help: "Engine role: rollout, train or other (default: rollout for sglang and vllm, else other).") var role: EngineInfo.Role?
    @Option(help: "Model name.") var model = ""
    @Option(help: "Decoder layers (default: the ids' layer axis).") var numLayers: Int?
    @Option(help: "Routed experts (default: from router_logits).") var numExperts: Int?
    @Option(help: "Experts per token (engine formats; default: the ids' last axis).") var topK: Int?
    @Option(help: "verl: columns of the left-padded prompt (default: the width of a prompts array).") var promptWidth: Int?
    @Option(help: "Decoder indices of the MoE layers, e.g. 3-60 or 0,2,4 (default: every layer).") var layerMap: String?
    @Option(help: "Policy version (weights step).") var policyVersion: Int?
    @Option(help: "Uid prefix: sequence i gets uid PREFIX+i.") var uidPrefix = ""
    @Option(help: "Header attribute key=value (repeatable).") var attr: [String] = []
    @Flag(help: "Store ids as given, without refusing out-of-range or duplicate experts.") var noValidate = false
    @Option(help: "Target raw bytes per chunk.") var chunkBytes = 4 << 20
    @Option(help: "Engine layouts: keep or drop logprobs; auto = the first record decides whether the trace has a logprobs column.")
    var logprobs: LogprobsMode = .auto

    enum LogprobsMode: String, ExpressibleByArgument, CaseIterable { case auto, keep, drop }

    func run() throws {
        try runReportingErrors {
            if [.sglang, .vllm, .nemo, .verl].contains(from) { return try importEngine() }
            var o = ImportOptions()
            o.engine = EngineInfo(name: engine ?? "unknown", version: engineVersion, role: role ?? .other)
            o.modelName = model
            o.numLayers = numLayers
            o.numExperts = numExperts
            o.layerMap = try layerMap.map(parseLayerList)
            o.policyVersion = policyVersion
            o.uidPrefix = uidPrefix
            o.validate = !noValidate
            o.attributes = try attributes()
            // Streamed a sequence at a time (memory: one sequence and one chunk); see NpzImport.
            let source = try from == .npy ? NpzImport(npy: input, options: o) : NpzImport(npz: input, options: o)
            let w = try TraceWriter(path: output, header: source.header, options: WriterOptions(chunkBytes: chunkBytes))
            while let r = try source.next() { try w.append(r) }
            try w.close()
        }
    }

    /// The --attr key=value pairs.
    func attributes() throws -> [String: String] {
        var out: [String: String] = [:]
        for kv in attr {
            let p = kv.split(separator: "=", maxSplits: 1)
            guard p.count == 2 else { throw ValidationError("--attr takes key=value, got \(kv)") }
            out[String(p[0])] = String(p[1])
        }
        return out
    }

    /// The engine layouts: geometry from flags, records streamed from the engine's own layout
    /// into the writer as they are parsed (memory: one input line plus one chunk of rows).
    func importEngine() throws {
        var arrays: [String: NpyArray] = [:]
        let nemoBatch = from == .nemo && isZip(input)
        if from == .verl || nemoBatch { arrays = try Npz.read(path: input) }
        let re = arrays["routed_experts"]
        guard let numExperts else { throw ValidationError("--from \(from.rawValue) needs --num-experts (the engines' output does not carry it)") }
        guard let k = topK ?? re.flatMap({ $0.shape.count == 4 ? $0.shape[3] : nil }) else {
            throw ValidationError("--from \(from.rawValue) needs --top-k")
        }
        let map = try layerMap.map(parseLayerList)
        guard let layers = numLayers ?? map.map({ ($0.last ?? 0) + 1 }) ?? re.flatMap({ $0.shape.count == 4 ? $0.shape[2] : nil }) else {
            throw ValidationError("--from \(from.rawValue) needs --num-layers (and --layer-map when some layers are dense)")
        }
        let model = ModelGeometry(name: self.model, numLayers: layers, numExperts: numExperts, topK: k, layerMap: map)
        do { try model.validate() } catch { throw ValidationError(error.message) }
        var settings = EngineImportSettings(model: model)
        settings.validate = !noValidate
        settings.uidPrefix = uidPrefix
        let defaultRole: EngineInfo.Role = from == .sglang || from == .vllm ? .rollout : .other
        let engineInfo = EngineInfo(name: engine ?? from.rawValue, version: engineVersion, role: role ?? defaultRole)
        let attrs = try attributes()
        let out = StagedOutput(path: output)
        var writer: TraceWriter? = nil
        // The header goes out before the first record: --logprobs decides its logprobs column, or
        // (auto) the first record does.
        let emit = { (r: TraceRecord) throws(TraceError) in
            var r = r
            if writer == nil {
                let keep = logprobs == .keep || (logprobs == .auto && !r.logprobs.isEmpty)
                let h = EngineImport.header(engine: engineInfo, settings: settings, logprobs: keep,
                                            policyVersion: policyVersion, attributes: attrs)
                writer = try TraceWriter(path: out.writePath, header: h, options: WriterOptions(chunkBytes: chunkBytes))
            }
            if logprobs == .drop { r.logprobs = [] }
            if !writer!.header.columns.logprobs && !r.logprobs.isEmpty {
                throw TraceError(.invalidInput, "record \(r.uid) has logprobs, but the first record had none, so the trace has no logprobs column: run again with --logprobs keep (or drop)", file: input)
            }
            try writer!.append(r)
        }
        do {
            switch from {
            case .sglang: try EngineImport.sglang(try JSONLines(path: input), settings: settings, notice: { note("rtrace: notice: \($0)") }, emit: emit)
            case .vllm: try EngineImport.vllm(try JSONLines(path: input), settings: settings, emit: emit)
            case .nemo where nemoBatch: for r in try EngineImport.nemoRLBatch(arrays, settings: settings, file: input) { try emit(r) }
            case .nemo: try EngineImport.nemoRL(try JSONLines(path: input), settings: settings, emit: emit)
            case .verl: for r in try EngineImport.verl(arrays, settings: settings, promptWidth: promptWidth, file: input) { try emit(r) }
            case .npz, .npy: return
            }
            guard let w = writer else { throw TraceError(.invalidInput, "no records: nothing in the input carries routing", file: input) }
            try w.close()
            try out.commit()
        } catch {
            out.abandon()
            throw error
        }
    }
}

/// Whether `path` is a regular file that starts like a zip archive (an `.npz`).
func isZip(_ path: String) -> Bool {
    guard path != "-", let s = try? InputSource(path: path), s.isSeekable, let b = try? s.read(at: 0, count: 4) else { return false }
    return b == [0x50, 0x4B, 0x03, 0x04]
}

/// `rtrace export`: a trace → arrays, bit-exact.
struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Convert a trace back into .npz arrays (the inverse of import, bit-exact).",
        discussion: """
            Writes the arrays import reads; ragged traces add n_rows, n_tokens, n_logprobs, start, uids,
            groups and rewards arrays. bf16 columns are written as uint16 bit patterns.
            Streams: topk_ids is written as the records are read when the trace is a complete file (its index
            gives the shape); the other arrays, and topk_ids from a pipe, go through temporary files in $TMPDIR
            (as much free disk as those arrays take). Memory: one record plus per-sequence values. Output is
            a zip that np.load reads (ZIP64 past 2 GiB), to a file or standard output.
            Example: rtrace export --to npz rollout.rtrace -o rollout.npz
            """)

    enum Target: String, ExpressibleByArgument, CaseIterable { case npz }

    @Option(help: "Output format: npz.") var to: Target = .npz
    @Argument(help: "The trace (- for standard input).") var input: String
    @Option(name: .shortAndLong, help: "The output file (- for standard output).") var output: String
    @Flag(help: "Deflate the npz members (np.savez_compressed).") var compress = false

    func run() throws {
        try runReportingErrors {
            // Streamed: topk_ids as the records arrive when the index gives its shape, the other arrays
            // through temporary files (NpzExport).
            let r = try TraceReader(path: input)
            let sink = try OutputSink(path: output)
            let export = try NpzExport(header: r.header, sink: sink, compress: compress, layout: r.index.map(NpzExport.Layout.init))
            try r.forEachRecord { try export.add($0) }
            try export.finish()
            try sink.close()
            for n in r.notices { note("rtrace: notice: \(n)") }
        }
    }
}
