import Foundation

/// The checks of `rtrace check` for capture bugs that leave plausible-looking data: NaN or infinite
/// floats, and rows that repeat the previous row in every layer for longer than chance allows.
///
/// Records are fed in file order (``add(_:offset:)``); run lengths are judged at the end
/// (``finish()``), against repeat rates measured over the whole trace.
///
/// **Repeated rows.** A pair of consecutive rows (r-1, r) of a record is *comparable* when both
/// are present in every MoE layer and, where the record's tokens cover them, their input tokens
/// differ (a repeated input token may route identically). Over the comparable pairs of the trace,
/// `q_l` is the fraction whose layer-`l` ids are equal slot for slot, and `p = Π_l q_l` the chance
/// that a pair repeats in every layer with layers taken as independent. A run of `m` consecutive
/// comparable pairs that repeat in every layer (m + 1 identical rows) is reported when
/// `N · p^m < 0.01`, N being the number of comparable pairs: fewer than one trace in a hundred of
/// this size and these repeat rates would hold such a run by chance.
struct CaptureCheck {
    let header: TraceHeader
    /// Comparable pairs, and per MoE layer those whose ids are equal.
    private(set) var pairs = 0
    private(set) var layerRepeats: [Int]
    /// Runs of all-layer repeats, longest kept when there are many.
    private var runs: [Run] = []
    private var shortestKept = 0
    static let keptRuns = 4096
    /// The chance level below which a run is reported.
    static let alpha = 0.01

    struct Run {
        var uid: String
        var offset: Int
        var ordinal: Int
        /// The first repeating row (it repeats row `row - 1`) and its position.
        var row: Int
        var position: Int
        var length: Int
    }

    private var ordinal = 0

    init(header: TraceHeader) {
        self.header = header
        layerRepeats = [Int](repeating: 0, count: header.model.moeLayers)
    }

    /// Checks one record's floats, and counts its row repeats. Returns the warnings about its floats.
    mutating func add(_ r: TraceRecord, offset: Int) -> [CheckIssue] {
        defer { ordinal += 1 }
        var out: [CheckIssue] = []
        let L = header.model.moeLayers, k = header.model.topK, E = header.model.numExperts
        func warn(_ m: String) { out.append(CheckIssue(severity: .warning, offset: offset, record: r.uid, message: m)) }
        if let w = r.weights, let (n, first) = CaptureCheck.nonFinite(w) {
            let row = first / (L * k), l = first / k % L, j = first % k
            warn("topk_weights: \(n) NaN or infinite \(w.dtype.rawValue) values, the first at row \(row) (position \(r.start + row)), layer \(header.model.layerMap[l]), slot \(j) — the capture did not record real weights")
        }
        if let g = r.logits, let (n, first) = CaptureCheck.nonFinite(g) {
            let row = first / (L * E), l = first / E % L, e = first % E
            warn("router_logits: \(n) NaN or infinite \(g.dtype.rawValue) values, the first at row \(row) (position \(r.start + row)), layer \(header.model.layerMap[l]), expert \(e)")
        }
        if let i = r.logprobs.firstIndex(where: { !$0.isFinite }) {
            let n = r.logprobs.reduce(0) { $0 + ($1.isFinite ? 0 : 1) }
            let pos = r.tokens.isEmpty ? "" : " (the token at position \(r.tokens.count - r.logprobs.count + i))"
            warn("logprobs: \(n) NaN or infinite values, the first logprob \(i)\(pos)")
        }
        countRepeats(r, offset: offset)
        return out
    }

    /// Counts `n` non-finite values of a float column and the index of the first, or nil when all are finite.
    static func nonFinite(_ a: FloatArray) -> (count: Int, first: Int)? {
        a.bytes.withUnsafeBytes { raw -> (Int, Int)? in
            func scan<T: FixedWidthInteger>(_: T.Type, mask: T) -> (Int, Int)? {
                let p = raw.bindMemory(to: T.self)
                var n = 0
                for v in p where T(littleEndian: v) & mask == mask { n &+= 1 }
                guard n > 0 else { return nil }
                return (n, p.firstIndex { T(littleEndian: $0) & mask == mask }!)
            }
            switch a.dtype {
            case .f32: return scan(UInt32.self, mask: 0x7F80_0000)
            case .bf16: return scan(UInt16.self, mask: 0x7F80)
            case .f16: return scan(UInt16.self, mask: 0x7C00)
            }
        }
    }

    private mutating func countRepeats(_ r: TraceRecord, offset: Int) {
        let L = header.model.moeLayers, k = header.model.topK, w = L * k
        guard r.rowCount > 1, w > 0 else { return }
        var runStart = -1, runLength = 0
        func endRun() {
            if runLength > 0 { keep(Run(uid: r.uid, offset: offset, ordinal: ordinal, row: runStart, position: r.start + runStart, length: runLength)) }
            runLength = 0
        }
        r.expertIDs.withUnsafeBufferPointer { ids in
            var prevPresent = !ids[0..<w].contains(TraceRecord.missing)
            for row in 1..<r.rowCount {
                let cur = ids.baseAddress! + row * w, prev = cur - w
                var present = true
                for l in 0..<L where cur[l * k] == TraceRecord.missing { present = false; break }
                defer { prevPresent = present }
                let p = r.start + row
                let sameToken = p < r.tokens.count && r.tokens[p] == r.tokens[p - 1]
                guard present && prevPresent && !sameToken else { endRun(); continue }
                pairs += 1
                var all = true
                for l in 0..<L {
                    var eq = true
                    for j in 0..<k where cur[l * k + j] != prev[l * k + j] { eq = false; break }
                    if eq { layerRepeats[l] += 1 } else { all = false }
                }
                if all {
                    if runLength == 0 { runStart = row }
                    runLength += 1
                } else {
                    endRun()
                }
            }
        }
        endRun()
    }

    private mutating func keep(_ run: Run) {
        if runs.count >= CaptureCheck.keptRuns {
            guard run.length > shortestKept else { return }
            runs.sort { $0.length > $1.length }
            runs.removeLast(runs.count / 2)
            shortestKept = runs.last?.length ?? 0
        }
        runs.append(run)
    }

    /// The chance that a comparable pair repeats in every layer (`Π q_l`), or nil with no pairs.
    var repeatChance: Double? {
        guard pairs > 0 else { return nil }
        return layerRepeats.reduce(1.0) { $0 * Double($1) / Double(pairs) }
    }

    /// The longest run of all-layer repeats `N · p^m` allows by chance (runs longer than this are reported).
    var longestRunByChance: Int? {
        guard let p = repeatChance, p > 0 else { return nil }
        if p >= 1 { return Int.max }
        // N · p^m < alpha  ⇔  m > log(alpha / N) / log(p)
        return max(0, Int((log(CaptureCheck.alpha / Double(pairs)) / log(p)).rounded(.down)))
    }

    /// Warnings for the runs longer than chance allows, in file order.
    func finish() -> [CheckIssue] {
        guard let p = repeatChance, let limit = longestRunByChance else { return [] }
        let rates = layerRepeats.map { String(format: "%.3g", Double($0) / Double(pairs)) }
        let rateText = rates.count > 8 ? rates.prefix(8).joined(separator: ", ") + ", …" : rates.joined(separator: ", ")
        return runs.filter { $0.length > limit }.sorted { ($0.ordinal, $0.row) < ($1.ordinal, $1.row) }.map { run in
            let chance = Double(pairs) * pow(p, Double(run.length))
            return CheckIssue(
                severity: .warning, offset: run.offset, record: run.uid,
                message: "rows \(run.row)…\(run.row + run.length - 1) (positions \(run.position)…\(run.position + run.length - 1)) repeat the row before them in every MoE layer although their tokens differ: a run of \(run.length); with this trace's per-layer repeat rates (\(rateText)) such a run has chance \(String(format: "%.2g", chance)) in \(pairs) row pairs (reported below \(CaptureCheck.alpha)) — stale or duplicated capture?")
        }
    }
}
