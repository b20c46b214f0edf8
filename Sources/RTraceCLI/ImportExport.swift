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
            sglang: JSON lines of /generate responses (meta_info.routed_experts = base64 [seq_len-1, layers, k]).
            vllm: JSON lines of RequestOutputs (prompt_routed_experts + outputs[i].routed_experts; -1 = missing).
            nemo: lines of NeMo RL wire strings nrlre1:<dtype>:<S>x<L>x<K>:<base64> (bare, or an object's routed_experts).
            verl: .npz with routed_experts [batch, seq, layers, k], attention_mask and input_ids [batch, seq]
            (left-padded prompt of --prompt-width columns, or the width of a prompts array).
            The engine formats carry no geometry: pass --num-layers, --num-experts and --top-k (verl: --num-experts).
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
            var arrays: [String: NpyArray]
            if from == .npy {
                let s = try InputSource(path: input)
                var bytes: [UInt8] = []
                while true { let b = try s.read(upTo: 1 << 20); if b.isEmpty { break }; bytes += b }
                arrays = ["topk_ids": try NpyArray.parse(bytes, name: input)]
            } else {
                arrays = try Npz.read(path: input)
            }
            if o.numLayers == nil, let m = o.layerMap, let ids = arrays["topk_ids"] {
                // With a layer map and no --num-layers, an axis longer than the map is the decoder axis.
                let axis = ids.shape.count >= 3 ? ids.shape[ids.shape.count - 2] : 0
                o.numLayers = axis > m.count ? axis : (m.last ?? 0) + 1
            }
            let (header, records) = try NpzConversion.makeTrace(arrays, options: o)
            arrays.removeAll()
            let w = try TraceWriter(path: output, header: header, options: WriterOptions(chunkBytes: chunkBytes))
            for r in records { try w.append(r) }
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

    /// The engine wire formats: geometry from flags, records from the engine's own layout.
    func importEngine() throws {
        var arrays: [String: NpyArray] = [:]
        if from == .verl { arrays = try Npz.read(path: input) }
        let re = arrays["routed_experts"]
        // The SGLang/vLLM/NeMo readers take the whole text; JSONLines reads `-` as standard input.
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
        let records: [TraceRecord]
        switch from {
        case .sglang: records = try EngineImport.sglang(try JSONLines(path: input), settings: settings)
        case .vllm: records = try EngineImport.vllm(try JSONLines(path: input), settings: settings)
        case .nemo: records = try EngineImport.nemoRL(try JSONLines(path: input), settings: settings)
        case .verl: records = try EngineImport.verl(arrays, settings: settings, promptWidth: promptWidth, file: input)
        case .npz, .npy: return
        }
        let defaultRole: EngineInfo.Role = from == .sglang || from == .vllm ? .rollout : .other
        let header = EngineImport.header(
            engine: EngineInfo(name: engine ?? from.rawValue, version: engineVersion, role: role ?? defaultRole),
            settings: settings, records: records, policyVersion: policyVersion, attributes: try attributes())
        let w = try TraceWriter(path: output, header: header, options: WriterOptions(chunkBytes: chunkBytes))
        for r in records { try w.append(r) }
        try w.close()
    }
}

/// `rtrace export`: a trace → arrays, bit-exact.
struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Convert a trace back into .npz arrays (the inverse of import, bit-exact).",
        discussion: """
            Writes the arrays import reads; ragged traces add n_rows, n_tokens, n_logprobs, start, uids,
            groups and rewards arrays. bf16 columns are written as uint16 bit patterns.
            Example: rtrace export --to npz rollout.rtrace -o rollout.npz
            """)

    enum Target: String, ExpressibleByArgument, CaseIterable { case npz }

    @Option(help: "Output format: npz.") var to: Target = .npz
    @Argument(help: "The trace (- for standard input).") var input: String
    @Option(name: .shortAndLong, help: "The output file (- for standard output).") var output: String
    @Flag(help: "Deflate the npz members (np.savez_compressed).") var compress = false

    func run() throws {
        try runReportingErrors {
            let r = try TraceReader(path: input)
            let records = try r.readAll()
            try Npz.write(NpzConversion.makeArrays(header: r.header, records: records), path: output, compress: compress)
            for n in r.notices { note("rtrace: notice: \(n)") }
        }
    }
}
