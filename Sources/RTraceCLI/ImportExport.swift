import ArgumentParser
import RTrace

/// `rtrace import`: arrays engines already dump → a trace.
struct Import: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import",
        abstract: "Convert routing arrays (.npz, .npy) into a trace.",
        discussion: """
            npz arrays: topk_ids [seqs, rows, layers, k] or [rows, layers, k] (int32/int16/uint8, -1 = missing),
            optional tokens [seqs, T], topk_weights (shape of ids; float16, float32 or uint16 bf16 bits),
            router_logits [seqs, rows, layers, experts], logprobs [seqs, n] (last n tokens), prompt_len
            (scalar or per sequence). Sequence i gets uid i (or --uid-prefix + i). With --layer-map, a layer
            axis of all decoder layers is reduced to the MoE layers.
            npy: a single topk_ids array.
            Example: rtrace import --from npz rollout.npz --engine sglang --role rollout -o - | rtrace info -
            """)

    enum Source: String, ExpressibleByArgument, CaseIterable { case npz, npy }

    @Option(help: "Input format: npz or npy.")
    var from: Source

    @Argument(help: "The input file (- for standard input).")
    var input: String

    @Option(name: .shortAndLong, help: "The output trace (- for standard output).")
    var output: String

    @Option(help: "Engine name (sglang, vllm, megatron, …).") var engine = "unknown"
    @Option(help: "Engine version.") var engineVersion = ""
    @Option(help: "Engine role: rollout, train or other.") var role: EngineInfo.Role = .other
    @Option(help: "Model name.") var model = ""
    @Option(help: "Decoder layers (default: the ids' layer axis).") var numLayers: Int?
    @Option(help: "Routed experts (default: from router_logits).") var numExperts: Int?
    @Option(help: "Decoder indices of the MoE layers, e.g. 3-60 or 0,2,4 (default: every layer).") var layerMap: String?
    @Option(help: "Policy version (weights step).") var policyVersion: Int?
    @Option(help: "Uid prefix: sequence i gets uid PREFIX+i.") var uidPrefix = ""
    @Option(help: "Header attribute key=value (repeatable).") var attr: [String] = []
    @Flag(help: "Store ids as given, without refusing out-of-range or duplicate experts.") var noValidate = false
    @Option(help: "Target raw bytes per chunk.") var chunkBytes = 4 << 20

    func run() throws {
        try runReportingErrors {
            var o = ImportOptions()
            o.engine = EngineInfo(name: engine, version: engineVersion, role: role)
            o.modelName = model
            o.numLayers = numLayers
            o.numExperts = numExperts
            o.layerMap = try layerMap.map(parseLayerList)
            o.policyVersion = policyVersion
            o.uidPrefix = uidPrefix
            o.validate = !noValidate
            for kv in attr {
                let p = kv.split(separator: "=", maxSplits: 1)
                guard p.count == 2 else { throw ValidationError("--attr takes key=value, got \(kv)") }
                o.attributes[String(p[0])] = String(p[1])
            }
            var arrays: [String: NpyArray]
            switch from {
            case .npz: arrays = try Npz.read(path: input)
            case .npy:
                let s = try InputSource(path: input)
                var bytes: [UInt8] = []
                while true { let b = try s.read(upTo: 1 << 20); if b.isEmpty { break }; bytes += b }
                arrays = ["topk_ids": try NpyArray.parse(bytes, name: input)]
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
        }
    }
}
