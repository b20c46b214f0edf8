/// What an engine importer needs besides the input: the model geometry (engines' wire formats do
/// not carry it) and how strictly to check ids.
public struct EngineImportSettings: Sendable {
    public var model: ModelGeometry
    /// Refuse ids out of range or chosen twice in a (row, layer).
    public var validate = true
    /// Uids of sequences that carry none are `prefix + n` (n counts from 0 in input order).
    public var uidPrefix = ""

    public init(model: ModelGeometry) { self.model = model }
}

/// Turns the routing that engines emit into trace records (spec/format.md §1 row convention: T
/// tokens, rows for positions `start ..< T - 1`), one record at a time.
///
/// Each importer reads a ``JSONLines`` input line by line and hands every record to `emit` as
/// soon as it is parsed, so memory stays at one line plus what `emit` keeps. The layouts, by
/// engine release (each importer's documentation has the fields):
///
/// | engine | release | layout |
/// |---|---|---|
/// | SGLang | 0.5.x (checked: 0.5.23) | `/generate` responses (an object, or an array for n > 1 and batches): `meta_info.routed_experts` = base64 int32 `[seq_len - 1 - start, all layers, k]` |
/// | SGLang | 0.5.x | OpenAI-compatible responses: `sglext.routed_experts` (the first choice's), or `choices[i].meta_info.routed_experts` |
/// | vLLM | ≥ 0.22 (checked: 0.27, 0.33) | request outputs: `outputs[i].routed_experts` `[T - 1 - start, all layers, k]` uint8/uint16 |
/// | vLLM | ≥ 0.22 | OpenAI-compatible responses: `choices[i].routed_experts` = base64 `.npy` |
/// | vLLM | 0.21 | `prompt_routed_experts` + each completion's `routed_experts`, int16; prefix-cached rows (0 or -1) missing |
/// | NeMo RL | checked: 7ea279a (2026-08) | `nrlre1:<dtype>:<S>x<L>x<K>:<base64>` strings, S = T rows, the last a filler; the `generate()` batch in an `.npz` |
/// | verl | 0.9 (checked: 0.9.1) | the padded batch or `AgentLoopOutput` samples in an `.npz` (``verl(_:settings:promptWidth:file:)``) |
public enum EngineImport {
    /// The header for records imported from `engine`: a logprobs column when `logprobs`.
    public static func header(
        engine: EngineInfo, settings: EngineImportSettings, logprobs: Bool, policyVersion: Int? = nil,
        attributes: [String: String] = [:]
    ) -> TraceHeader {
        TraceHeader(engine: engine, model: settings.model, columns: ColumnTypes(logprobs: logprobs),
                    policyVersion: policyVersion, attributes: attributes)
    }

    /// Checks a record's shapes against the geometry, naming where it came from. Its ids came from
    /// ``EngineArrays/routingIDs(_:model:validate:what:rows:)``, which checked them.
    static func checked(_ r: TraceRecord, _ s: EngineImportSettings, _ where_: String) throws(TraceError) -> TraceRecord {
        // Only the geometry and columns matter here; a fixed `created` spares a date formatter per record.
        let h = TraceHeader(engine: EngineInfo(name: "", role: .other), model: s.model,
                            columns: ColumnTypes(logprobs: !r.logprobs.isEmpty), created: "")
        do { try r.validateShape(h, checkIDs: false) } catch {
            throw TraceError(.invalidInput, "\(where_): \(error.message)")
        }
        return r
    }

    /// Runs `body` for each line's parsed JSON value, turning its errors into ones that name the
    /// file, the line and the byte offset. With `bareWireStrings`, a line that is an unquoted
    /// NeMo RL wire string is handed over as a ``Line/wire(_:)``.
    static func eachLine(
        _ input: JSONLines, bareWireStrings: Bool = false,
        _ body: (_ value: Line, _ line: Int) throws(TraceError) -> Void
    ) throws(TraceError) {
        let tape = JSONTape()
        var lines = 0
        try input.forEachLine { (line, offset, text) throws(TraceError) in
            lines += 1
            do throws(TraceError) {
                if bareWireStrings, let w = bareWire(text) {
                    try body(.wire(w), line)
                    return
                }
                if let e = tape.parse(text) {
                    throw TraceError(.invalidInput, "line \(line): not valid JSON: \(e.message) (byte \(e.offset) of the line)",
                                     file: input.file, offset: offset + e.offset)
                }
                try body(.json(tape.root), line)
            } catch {
                throw error.file != nil ? error : TraceError(
                    error.kind, error.message.hasPrefix("line ") ? error.message : "line \(line): \(error.message)",
                    file: input.file, offset: error.offset ?? offset)
            }
        }
        if lines == 0 { throw TraceError(.invalidInput, "no records: the input has no JSON lines", file: input.file) }
    }

    /// Runs `body` for each object of the input: a line's object, or each element of a line's JSON
    /// array, with where it is (`line 3`, `line 4[1]`) and its ordinal. Anything else is an error
    /// saying what was found and, in `expecting`, what the engine sends.
    static func eachObject(
        _ input: JSONLines, expecting: String, _ body: (_ o: JSONValue, _ what: String, _ ordinal: Int) throws(TraceError) -> Void
    ) throws(TraceError) {
        var n = 0
        try eachLine(input) { (value, line) throws(TraceError) in
            guard case .json(let v) = value else { return }
            let items = v.kind == .array ? v.elements : [v]
            for (j, o) in items.enumerated() {
                let what = v.kind == .array ? "line \(line)[\(j)]" : "line \(line)"
                guard o.kind == .object else { throw TraceError(.invalidInput, "\(what) is \(o.summary); \(expecting)") }
                try body(o, what, n)
                n += 1
            }
        }
    }

    /// One line of input: a JSON value, or a bare NeMo RL wire string.
    enum Line {
        case json(JSONValue)
        case wire(UnsafeRawBufferPointer)
    }

    /// The line's text without surrounding blanks when it is an unquoted `nrlre1:` string.
    static func bareWire(_ text: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer? {
        var lo = 0, hi = text.count
        while lo < hi && (text[lo] == 0x20 || text[lo] == 0x09) { lo += 1 }
        while hi > lo && (text[hi - 1] == 0x20 || text[hi - 1] == 0x09 || text[hi - 1] == 0x0D) { hi -= 1 }
        let t = UnsafeRawBufferPointer(rebasing: text[lo..<hi])
        return t.starts(with: Array("nrlre1:".utf8)) ? t : nil
    }

    /// Collects what a streaming importer emits (for small inputs and tests).
    static func collect(_ run: (_ emit: (TraceRecord) throws(TraceError) -> Void) throws(TraceError) -> Void) throws(TraceError) -> [TraceRecord] {
        var out: [TraceRecord] = []
        try run { (r: TraceRecord) throws(TraceError) in out.append(r) }
        return out
    }
}
