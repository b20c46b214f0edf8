import Foundation

/// The engine that wrote a trace.
public struct EngineInfo: Sendable, Equatable {
    /// What the engine was doing when it recorded.
    public enum Role: String, Sendable, CaseIterable {
        case rollout, train, other
    }
    /// For example `sglang`, `vllm`, `megatron`, `transformers`.
    public var name: String
    /// The engine's version string.
    public var version: String
    /// Rollout (inference), training, or other.
    public var role: Role

    public init(name: String, version: String = "", role: Role) {
        self.name = name
        self.version = version
        self.role = role
    }
}

/// The routing geometry of the model: which decoder layers route, over how many experts, how many at a time.
public struct ModelGeometry: Sendable, Equatable {
    /// The model's name (free text).
    public var name: String
    /// Decoder layers in the model, dense ones included.
    public var numLayers: Int
    /// Routed experts per MoE layer.
    public var numExperts: Int
    /// Experts chosen per token and MoE layer.
    public var topK: Int
    /// The decoder-layer index of each MoE layer, increasing. The trace's layer axis follows it.
    public var layerMap: [Int]

    /// A geometry where every decoder layer is an MoE layer unless `layerMap` says otherwise.
    public init(name: String = "", numLayers: Int, numExperts: Int, topK: Int, layerMap: [Int]? = nil) {
        self.name = name
        self.numLayers = numLayers
        self.numExperts = numExperts
        self.topK = topK
        self.layerMap = layerMap ?? Array(0..<numLayers)
    }

    /// MoE layers: the length of the trace's layer axis.
    public var moeLayers: Int { layerMap.count }

    /// Checks the rules of spec/format.md §3.2.
    public func validate() throws(TraceError) {
        func bad(_ m: String) -> TraceError { TraceError(.badHeader, "model.\(m)") }
        guard (1...65_535).contains(numLayers) else { throw bad("num_layers is \(numLayers), expected 1…65535") }
        guard (1...65_535).contains(numExperts) else { throw bad("num_experts is \(numExperts), expected 1…65535") }
        guard topK >= 1, topK <= min(254, numExperts) else {
            throw bad("top_k is \(topK), expected 1…\(min(254, numExperts)) (at most num_experts and 254)")
        }
        guard !layerMap.isEmpty else { throw bad("layer_map is empty: a trace needs at least one MoE layer") }
        for (i, l) in layerMap.enumerated() {
            guard l >= 0, l < numLayers else { throw bad("layer_map[\(i)] is \(l), outside 0…\(numLayers - 1)") }
            if i > 0, layerMap[i - 1] >= l { throw bad("layer_map must increase, but [\(i - 1)]=\(layerMap[i - 1]) and [\(i)]=\(l)") }
        }
    }
}

/// Which optional columns a trace carries, and their on-disk types.
public struct ColumnTypes: Sendable, Equatable {
    /// The dtype of the top-k gate weights, or nil when absent.
    public var topkWeights: FloatDType?
    /// The dtype of the full router logits, or nil when absent.
    public var routerLogits: FloatDType?
    /// Whether per-token sampled logprobs (f32) are present.
    public var logprobs: Bool

    public init(topkWeights: FloatDType? = nil, routerLogits: FloatDType? = nil, logprobs: Bool = false) {
        self.topkWeights = topkWeights
        self.routerLogits = routerLogits
        self.logprobs = logprobs
    }
}

/// The self-describing header of a trace (spec/format.md §3).
public struct TraceHeader: Sendable, Equatable {
    /// The format's major version this library reads and writes.
    public static let majorVersion: UInt16 = 1
    /// The format's minor version this library writes.
    public static let minorVersion: UInt16 = 0

    public var engine: EngineInfo
    public var model: ModelGeometry
    public var columns: ColumnTypes
    /// The step of the weights that produced the routing.
    public var policyVersion: Int?
    /// RFC 3339 UTC creation time.
    public var created: String
    /// Free key/value attributes.
    public var attributes: [String: String]
    /// Keys of `columns` this reader does not know (from a later minor version).
    public var unknownColumns: [String] = []
    /// The `engine.role` as written, when it is not one this reader knows (it is read as `other`).
    public var unknownRole: String? = nil
    /// The version read from a file (the written one for new headers).
    public var version: (major: UInt16, minor: UInt16) = (TraceHeader.majorVersion, TraceHeader.minorVersion)

    public init(
        engine: EngineInfo, model: ModelGeometry, columns: ColumnTypes = ColumnTypes(),
        policyVersion: Int? = nil, created: String? = nil, attributes: [String: String] = [:]
    ) {
        self.engine = engine
        self.model = model
        self.columns = columns
        self.policyVersion = policyVersion
        self.created = created ?? TraceHeader.now()
        self.attributes = attributes
    }

    public static func == (a: TraceHeader, b: TraceHeader) -> Bool {
        a.engine == b.engine && a.model == b.model && a.columns == b.columns && a.policyVersion == b.policyVersion
            && a.created == b.created && a.attributes == b.attributes
    }

    /// The id width the format requires for this model.
    public var idWidth: IDWidth { IDWidth.required(numExperts: model.numExperts) }

    static func now() -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime]
        return f.string(from: Date())
    }

    /// The header as a JSON-compatible dictionary (spec/format.md §3.2).
    public var jsonObject: [String: Any] {
        var cols: [String: Any] = ["topk_ids": idWidth.rawValue, "tokens": "i32"]
        if let w = columns.topkWeights { cols["topk_weights"] = w.rawValue }
        if let l = columns.routerLogits { cols["router_logits"] = l.rawValue }
        if columns.logprobs { cols["logprobs"] = "f32" }
        return [
            "format": "rtrace",
            "engine": ["name": engine.name, "version": engine.version, "role": engine.role.rawValue],
            "model": [
                "name": model.name, "num_layers": model.numLayers, "num_experts": model.numExperts,
                "top_k": model.topK, "layer_map": model.layerMap,
            ] as [String: Any],
            "columns": cols,
            "policy_version": policyVersion.map { $0 as Any } ?? NSNull(),
            "created": created,
            "attributes": attributes,
        ]
    }

    /// The header JSON bytes a writer stores.
    public func jsonBytes() -> [UInt8] {
        let data = try! JSONSerialization.data(withJSONObject: jsonObject, options: [.sortedKeys])
        return [UInt8](data)
    }

    /// Feature names of later minor versions (spec/format.md §10) this reader implements: none, it reads 1.0.
    public static let supportedFeatures: Set<String> = []

    /// Parses and validates header JSON (spec/format.md §3.2): `format`, then `requires`, then every other rule.
    public static func parse(json bytes: [UInt8]) throws(TraceError) -> TraceHeader {
        func bad(_ m: String) -> TraceError { TraceError(.badHeader, m) }
        let o = try HeaderJSON.object(bytes, what: "header JSON")
        guard o["format"] as? String == "rtrace" else { throw bad("header field format must be \"rtrace\"") }
        if let r = o["requires"] {
            guard let names = r as? [Any], names.allSatisfy({ $0 is String }) else {
                throw bad("header field requires must be an array of strings, found \(r)")
            }
            let missing = names.compactMap { $0 as? String }.filter { !supportedFeatures.contains($0) }
            if !missing.isEmpty {
                throw TraceError(.unsupportedVersion, "the file requires \(missing.joined(separator: ", ")), which this reader does not implement; this reader reads format 1.0: a newer reader is needed")
            }
        }
        func string(_ d: [String: Any], _ k: String, _ path: String) throws(TraceError) -> String {
            guard let v = d[k] else { return "" }
            guard let s = v as? String else { throw bad("\(path).\(k) must be a string, found \(v)") }
            return s
        }
        func int(_ d: [String: Any], _ k: String, _ path: String) throws(TraceError) -> Int {
            guard let v = d[k] else { throw bad("\(path).\(k) is missing") }
            guard let n = HeaderJSON.integer(v) else { throw bad("\(path).\(k) must be an integer (no fraction or exponent), found \(v)") }
            return n
        }
        guard let e = o["engine"] as? [String: Any] else { throw bad("header field engine is missing or not an object") }
        guard let roleS = e["role"] as? String else {
            throw bad("engine.role must be a string (rollout, train or other), found \(String(describing: e["role"] ?? "nothing"))")
        }
        let engine = EngineInfo(name: try string(e, "name", "engine"), version: try string(e, "version", "engine"),
                                role: EngineInfo.Role(rawValue: roleS) ?? .other)
        guard let m = o["model"] as? [String: Any] else { throw bad("header field model is missing or not an object") }
        guard let lm = m["layer_map"] as? [Any] else { throw bad("model.layer_map must be an array of integers") }
        var layerMap: [Int] = []
        for x in lm {
            guard let n = HeaderJSON.integer(x) else { throw bad("model.layer_map must hold integers, found \(x)") }
            layerMap.append(n)
        }
        let model = ModelGeometry(
            name: try string(m, "name", "model"), numLayers: try int(m, "num_layers", "model"),
            numExperts: try int(m, "num_experts", "model"), topK: try int(m, "top_k", "model"), layerMap: layerMap)
        try model.validate()
        guard let c = o["columns"] as? [String: Any] else { throw bad("header field columns is missing or not an object") }
        let width = IDWidth.required(numExperts: model.numExperts)
        guard c["topk_ids"] as? String == width.rawValue else {
            throw bad("columns.topk_ids must be \"\(width.rawValue)\" for \(model.numExperts) experts, found \(String(describing: c["topk_ids"] ?? "nothing"))")
        }
        guard c["tokens"] as? String == "i32" else { throw bad("columns.tokens must be \"i32\"") }
        func dtype(_ k: String) throws(TraceError) -> FloatDType? {
            guard let v = c[k] else { return nil }
            guard let s = v as? String, let d = FloatDType(rawValue: s) else {
                throw bad("columns.\(k) must be f16, bf16 or f32, found \(v)")
            }
            return d
        }
        var columns = ColumnTypes(topkWeights: try dtype("topk_weights"), routerLogits: try dtype("router_logits"))
        if let lp = c["logprobs"] {
            guard lp as? String == "f32" else { throw bad("columns.logprobs must be \"f32\", found \(lp)") }
            columns.logprobs = true
        }
        var policy: Int? = nil
        if let p = o["policy_version"], !(p is NSNull) {
            policy = try int(o, "policy_version", "header")
            guard (0...maxPolicyVersion).contains(policy!) else {
                throw bad("policy_version is \(policy!), expected null or 0…\(maxPolicyVersion)")
            }
        }
        var attrs: [String: String] = [:]
        if let a = o["attributes"] {
            guard let d = a as? [String: Any] else { throw bad("attributes must be an object") }
            for (k, v) in d {
                guard let s = v as? String else { throw bad("attributes.\(k) must be a string, found \(v)") }
                attrs[k] = s
            }
        }
        var h = TraceHeader(engine: engine, model: model, columns: columns, policyVersion: policy,
                            created: try string(o, "created", "header"), attributes: attrs)
        if EngineInfo.Role(rawValue: roleS) == nil { h.unknownRole = roleS }
        let known: Set<String> = ["topk_ids", "tokens", "topk_weights", "router_logits", "logprobs"]
        h.unknownColumns = c.keys.filter { !known.contains($0) }.sorted()
        return h
    }

    /// The largest `policy_version` (2^53 − 1: every JSON reader holds it exactly).
    public static let maxPolicyVersion = (1 << 53) - 1

    /// Checks what a writer is about to store against spec/format.md §3.2.
    public func validate() throws(TraceError) {
        try model.validate()
        if let p = policyVersion, !(0...TraceHeader.maxPolicyVersion).contains(p) {
            throw TraceError(.badHeader, "policy_version is \(p), expected null or 0…\(TraceHeader.maxPolicyVersion)")
        }
    }
}

/// The JSON rules of spec/format.md §3.2, shared by the header and the records' attributes.
enum HeaderJSON {
    /// Parses one JSON object (RFC 8259: finite numbers, paired surrogates).
    static func object<B: Collection<UInt8>>(_ bytes: B, what: String) throws(TraceError) -> [String: Any] {
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { throw TraceError(.badHeader, "\(what) starts with a byte-order mark; the format forbids one") }
        let any: Any
        do {
            any = try JSONSerialization.jsonObject(with: Data(bytes))
        } catch {
            throw TraceError(.badHeader, "\(what) does not parse: \(error.localizedDescription)")
        }
        guard let o = any as? [String: Any] else { throw TraceError(.badHeader, "\(what) is not an object") }
        return o
    }

    /// A JSON integer as written without a fraction or exponent (`17`, not `17.0`, `1.7e1` or `true`).
    static func integer(_ v: Any) -> Int? {
        guard let n = v as? NSNumber, !(n is NSDecimalNumber) else { return nil }
        switch String(cString: n.objCType) {
        case "i", "s", "l", "q": return Int(exactly: n.int64Value)
        case "I", "S", "L", "Q": return Int(exactly: n.uint64Value)
        default: return nil  // "c": a boolean; "d", "f": a fraction or an exponent
        }
    }
}
