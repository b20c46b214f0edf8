import Foundation

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

/// Turns the routing that engines already emit into trace records (spec/format.md §1 row convention).
///
/// - SGLang: `/generate` responses, one JSON object per line, `meta_info.routed_experts` =
///   base64 of a flat `[seq_len - 1, layers, top_k]` array (`routed_experts_dtype`, default int32;
///   rows from `routed_experts_start_len`).
/// - vLLM: request outputs, one per line: `prompt_routed_experts` `[prompt_len, layers, k]` shared
///   by the completions in `outputs[i].routed_experts` `[gen_len, layers, k]`; nested int16 lists
///   or base64 `.npy`; `-1` rows (prefix-cached) stay missing.
/// - NeMo RL: `nrlre1:<dtype>:<S>x<L>x<K>:<base64>` strings, bare or in an object's `routed_experts`.
/// - verl: batched `[batch, seq, layers, k]` arrays aligned to a left-padded prompt (see ``verl(_:settings:promptWidth:)``).
public enum EngineImport {
    /// The header for records imported from `engine`: a logprobs column when any record has logprobs.
    public static func header(
        engine: EngineInfo, settings: EngineImportSettings, records: [TraceRecord], policyVersion: Int? = nil,
        attributes: [String: String] = [:]
    ) -> TraceHeader {
        TraceHeader(engine: engine, model: settings.model,
                    columns: ColumnTypes(logprobs: records.contains { !$0.logprobs.isEmpty }),
                    policyVersion: policyVersion, attributes: attributes)
    }

    /// Checks a record against the header it will be written under, naming where it came from.
    static func checked(_ r: TraceRecord, _ s: EngineImportSettings, _ where_: String, file: String, offset: Int?) throws(TraceError) -> TraceRecord {
        // Only the geometry and columns matter here; a fixed `created` spares a date formatter per record.
        let h = TraceHeader(engine: EngineInfo(name: "", role: .other), model: s.model,
                            columns: ColumnTypes(logprobs: !r.logprobs.isEmpty), created: "")
        do { try r.validateShape(h) } catch {
            throw TraceError(.invalidInput, "\(where_): \(error.message)", file: file, offset: offset)
        }
        return r
    }

    /// Runs `body` for each line's value, turning its errors into ones that name the file, line and
    /// offset. A line is parsed as JSON, except a bare NeMo RL wire string when `bareWireStrings`.
    static func eachLine(
        _ input: JSONLines, bareWireStrings: Bool = false,
        _ body: (_ value: Any, _ line: Int) throws(TraceError) -> [TraceRecord]
    ) throws(TraceError) -> [TraceRecord] {
        var out: [TraceRecord] = []
        var failure: TraceError? = nil
        input.forEachLine { line, offset, text in
            guard failure == nil else { return }
            do throws(TraceError) {
                let raw = bareWireStrings ? String(decoding: text, as: UTF8.self).trimmingCharacters(in: .whitespaces) : ""
                let v: Any = raw.hasPrefix("nrlre1:") ? raw : try input.parse(text, line: line, offset: offset)
                out += try body(v, line)
            } catch {
                failure = error.file == nil
                    ? TraceError(error.kind, error.message.hasPrefix("line ") ? error.message : "line \(line): \(error.message)", file: input.file, offset: error.offset ?? offset)
                    : error
            }
        }
        if let failure { throw failure }
        if out.isEmpty { throw TraceError(.invalidInput, "no records: the input has no JSON lines", file: input.file) }
        return out
    }
}
