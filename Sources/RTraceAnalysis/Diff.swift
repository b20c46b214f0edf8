import Dispatch
import Foundation
import RTrace

/// Options of ``diffTraces(a:b:options:)``.
public struct DiffOptions: Sendable {
    /// Position buckets: row position relative to the sequence length, split in this many equal parts.
    public var buckets: Int = 4
    /// How many sequences with the most flipped rows to list.
    public var top: Int = 10
    /// Worker threads for the comparison, and chunks decoded at once.
    public var threads: Int = max(1, ProcessInfo.processInfo.activeProcessorCount)
    /// Thresholds C of the importance-sampling and rejection rules in the policy report (verl's
    /// `rollout_is_threshold` / `rollout_rs_threshold`); each must be finite and > 0.
    public var isThresholds: [Double] = PolicyAcc.defaultThresholds
    /// The part of the uid space to compare (``UIDShard/all``: every uid).
    public var uidShard = UIDShard.all
    /// Bytes of records kept in memory while they wait for their partner; beyond it they wait in a
    /// temporary file (see ``diffPartial(a:b:options:)``).
    public var memoryBudget = 12 << 20
    /// Where that file goes (nil: `TMPDIR`, else /tmp).
    public var spillDirectory: String? = nil
    /// Join as two streams even when every file has an index (tests compare both joins).
    var streamJoin = false

    public init(buckets: Int = 4, top: Int = 10, isThresholds: [Double] = PolicyAcc.defaultThresholds) {
        self.buckets = max(1, buckets)
        self.top = max(0, top)
        self.isThresholds = isThresholds
    }
}

/// Tallies of one comparison; partial tallies add up exactly (integer counts, and sums of doubles
/// kept as ``WideSum``s, each sequence's contribution added once), in any order.
///
/// The routing counts live in one histogram over (class, position bucket, layer, |A∩B|): the per-layer,
/// per-class, per-bucket and layer × bucket views are its sums, so comparing a (row, layer) costs one
/// increment.
struct DiffAcc: Equatable, Sendable {
    let L: Int, k: Int, E: Int, nb: Int
    /// (row, layer)s by intersection size |A∩B| (0…k), class (0 prompt, 1 response), position bucket
    /// and layer: `[((c*nb+b)*L+l)*(k+1)+i]`.
    var cells: [Int]
    /// (row, layer)s whose slot order differs, `[(c*nb+b)*L+l]`.
    var orderCells: [Int]
    /// Per layer: Σ router KL and Σ |w_A − w_B|, and how many terms each.
    var klSum: [WideSum], klN: [Int]
    var wSum: [WideSum], wN: [Int]
    /// Per class: rows with at least one compared layer, rows with a flipped layer, flipped (row, layer)s.
    var rows = [0, 0], anyFlip = [0, 0], flippedLayers = [0, 0]
    /// Per bucket: rows with a compared layer, rows with a flipped layer.
    var brows: [Int], bany: [Int]
    var matchedRows = 0, rowsOnlyA = 0, rowsOnlyB = 0
    var missingA = 0, missingB = 0, skippedLayerRows = 0
    /// Policy mismatch over response tokens with logprobs on both sides (PolicyMetrics.swift).
    var policy: PolicyAcc
    /// Sequences with flipped rows (``keepTop(_:)`` keeps the first N by ``TopSequence/ranked(_:_:)``).
    var top: [TopSequence] = []

    init(L: Int, k: Int, E: Int, buckets: Int, isThresholds: [Double] = PolicyAcc.defaultThresholds) {
        self.L = L; self.k = k; self.E = E; nb = buckets
        policy = PolicyAcc(layers: L, thresholds: isThresholds)
        cells = Array(repeating: 0, count: 2 * buckets * L * (k + 1))
        orderCells = Array(repeating: 0, count: 2 * buckets * L)
        klSum = Array(repeating: WideSum(), count: L); klN = Array(repeating: 0, count: L)
        wSum = Array(repeating: WideSum(), count: L); wN = Array(repeating: 0, count: L)
        brows = Array(repeating: 0, count: buckets); bany = Array(repeating: 0, count: buckets)
    }

    /// Calls `body(class, bucket, layer, cell)` for every cell: `orderCells[cell]`, and its histogram at
    /// `cells[cell * (k + 1) ...]`.
    func forEachCell(_ body: (Int, Int, Int, Int) -> Void) {
        for c in 0..<2 { for b in 0..<nb { for l in 0..<L { body(c, b, l, (c * nb + b) * L + l) } } }
    }
    /// Intersection histogram (0…k) and ordered flips of one class and layer, summed over buckets.
    func layerCell(_ c: Int, _ l: Int) -> (hist: [Int], oflips: Int) {
        var h = Array(repeating: 0, count: k + 1), o = 0
        for b in 0..<nb {
            let cell = (c * nb + b) * L + l
            o += orderCells[cell]
            for i in 0...k { h[i] += cells[cell * (k + 1) + i] }
        }
        return (h, o)
    }
    /// Intersection histogram per bucket, `[b*(k+1)+i]`.
    var bhist: [Int] {
        var h = Array(repeating: 0, count: nb * (k + 1))
        forEachCell { _, b, _, cell in for i in 0...k { h[b * (k + 1) + i] += cells[cell * (k + 1) + i] } }
        return h
    }
    /// Rows whose slot order differs, per bucket.
    var boflips: [Int] {
        var o = Array(repeating: 0, count: nb)
        forEachCell { _, b, _, cell in o[b] += orderCells[cell] }
        return o
    }
    /// Per layer and bucket, `[l*nb+b]`: compared (row, layer)s, or with `flipped` those whose set differs.
    func grid(flipped: Bool) -> [Int] {
        var g = Array(repeating: 0, count: L * nb)
        forEachCell { _, b, l, cell in for i in 0..<(flipped ? k : k + 1) { g[l * nb + b] += cells[cell * (k + 1) + i] } }
        return g
    }

    mutating func merge(_ o: DiffAcc) {
        for i in cells.indices { cells[i] += o.cells[i] }
        for i in orderCells.indices { orderCells[i] += o.orderCells[i] }
        for l in 0..<L { klSum[l].merge(o.klSum[l]); klN[l] += o.klN[l]; wSum[l].merge(o.wSum[l]); wN[l] += o.wN[l] }
        for c in 0..<2 { rows[c] += o.rows[c]; anyFlip[c] += o.anyFlip[c]; flippedLayers[c] += o.flippedLayers[c] }
        for b in 0..<nb { brows[b] += o.brows[b]; bany[b] += o.bany[b] }
        matchedRows += o.matchedRows; rowsOnlyA += o.rowsOnlyA; rowsOnlyB += o.rowsOnlyB
        missingA += o.missingA; missingB += o.missingB; skippedLayerRows += o.skippedLayerRows
        policy.merge(o.policy)
        top += o.top
    }

    /// Keeps the first `n` of ``top``: exact for any merge, as the order is total (ties by uid).
    mutating func keepTop(_ n: Int) {
        top = Array(top.sorted(by: TopSequence.ranked).prefix(n))
    }

    /// Compares one sequence's two records. `stamp`/`mark` are scratch (no allocation per row).
    mutating func add(_ a: TraceRecord, _ b: TraceRecord, mark: inout [UInt32], stamp: inout UInt32) {
        let L = self.L, k = self.k, E = self.E, nb = self.nb, k1p = k + 1
        let lo = max(a.start, b.start), hi = min(a.start + a.rowCount, b.start + b.rowCount)
        let overlap = max(0, hi - lo)
        matchedRows += overlap
        rowsOnlyA += a.rowCount - overlap
        rowsOnlyB += b.rowCount - overlap
        let seqLen = max(1, a.tokens.count, a.start + a.rowCount, b.start + b.rowCount)
        let wa = (a.weights != nil && b.weights != nil) ? a.weights!.floats : nil
        let wb = wa != nil ? b.weights!.floats : nil
        let la = (a.logits != nil && b.logits != nil) ? a.logits!.floats : nil
        let lb = la != nil ? b.logits!.floats : nil
        var flippedRows = 0
        // This sequence's sums per layer, added to the exact sums once at the end.
        var klPart = [Double](repeating: 0, count: la != nil ? L : 0), wPart = [Double](repeating: 0, count: wa != nil ? L : 0)
        // Flipped layers of each overlapping row (−1: no layer compared), the routing context of the policy.
        var rowFlips = [Int32](repeating: -1, count: overlap)
        var st = stamp
        defer { stamp = st }
        if overlap > 0 {
            var missA = 0, missB = 0, skipped = 0
            a.expertIDs.withUnsafeBufferPointer { ea in
                b.expertIDs.withUnsafeBufferPointer { eb in
                    mark.withUnsafeMutableBufferPointer { mk in
                        cells.withUnsafeMutableBufferPointer { cs in
                            orderCells.withUnsafeMutableBufferPointer { os in
                                // overlap > 0: both records hold rows, so both buffers are non-empty.
                                let pa = ea.baseAddress!, pb = eb.baseAddress!
                                for pos in lo..<hi {
                                    let ra = pos - a.start, rb = pos - b.start
                                    let c = a.isPromptRow(ra) ? 0 : 1
                                    let bk = min(nb - 1, pos * nb / seqLen)
                                    let rowCell = (c * nb + bk) * L
                                    var flippedL = 0, compared = 0
                                    for l in 0..<L {
                                        let oa = (ra * L + l) * k, ob = (rb * L + l) * k
                                        let ma = pa[oa] == TraceRecord.missing, mb = pb[ob] == TraceRecord.missing
                                        if ma || mb {
                                            if ma { missA += 1 }
                                            if mb { missB += 1 }
                                            skipped += 1
                                            continue
                                        }
                                        compared += 1
                                        // Most rows agree slot for slot: then the sets are equal. Otherwise A's
                                        // experts are marked with a fresh stamp in a per-worker table (65536
                                        // entries, any id indexes it): no allocation and no clearing per row.
                                        var inter = k
                                        if !sameSlots(pa + oa, pb + ob, k) {
                                            os[rowCell + l] += 1
                                            if st == UInt32.max {
                                                for i in 0..<mk.count { mk[i] = 0 }
                                                st = 0
                                            }
                                            st &+= 1
                                            let s = st
                                            for j in 0..<k { mk[Int(pa[oa + j])] = s }
                                            inter = 0
                                            for j in 0..<k { inter &+= mk[Int(pb[ob + j])] == s ? 1 : 0 }
                                        }
                                        cs[(rowCell + l) * k1p + inter] += 1
                                        if inter < k { flippedL += 1 }
                                        if let wa, let wb {
                                            var s = 0.0, n = 0
                                            for j in 0..<k {
                                                let e = pa[oa + j]
                                                for j2 in 0..<k where pb[ob + j2] == e {
                                                    s += abs(Double(wa[oa + j]) - Double(wb[ob + j2])); n += 1
                                                    break
                                                }
                                            }
                                            wPart[l] += s; wN[l] += n
                                        }
                                        if let la, let lb {
                                            klPart[l] += routerKL(la, (ra * L + l) * E, lb, (rb * L + l) * E, E)
                                            klN[l] += 1
                                        }
                                    }
                                    if compared > 0 {
                                        rowFlips[pos - lo] = Int32(flippedL)
                                        rows[c] += 1; brows[bk] += 1
                                        flippedLayers[c] += flippedL
                                        if flippedL > 0 { anyFlip[c] += 1; bany[bk] += 1; flippedRows += 1 }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            missingA += missA; missingB += missB; skippedLayerRows += skipped
        }
        for l in klPart.indices { klSum[l].add(klPart[l]) }
        for l in wPart.indices { wSum[l].add(wPart[l]) }
        if flippedRows > 0 { top.append(TopSequence(uid: a.uid, flippedRows: flippedRows, rows: overlap)) }
        policy.add(a, b, rowFlips: rowFlips, firstRow: lo)
    }
}

/// Whether two (row, layer)s hold the same `k` ids in the same slots, compared eight bytes at a time.
@inline(__always)
func sameSlots(_ a: UnsafePointer<UInt16>, _ b: UnsafePointer<UInt16>, _ k: Int) -> Bool {
    let ra = UnsafeRawPointer(a), rb = UnsafeRawPointer(b)
    let bytes = 2 * k
    var diff: UInt64 = 0, i = 0
    while i + 8 <= bytes {
        diff |= ra.loadUnaligned(fromByteOffset: i, as: UInt64.self) ^ rb.loadUnaligned(fromByteOffset: i, as: UInt64.self)
        i += 8
    }
    while i < bytes {
        diff |= UInt64(ra.load(fromByteOffset: i, as: UInt16.self) ^ rb.load(fromByteOffset: i, as: UInt16.self))
        i += 2
    }
    return diff == 0
}

/// KL(softmax(a) ‖ softmax(b)) over `n` logits, in double precision.
@inline(__always)
func routerKL(_ a: [Float], _ oa: Int, _ b: [Float], _ ob: Int, _ n: Int) -> Double {
    var ma = -Double.infinity, mb = -Double.infinity
    for e in 0..<n { ma = max(ma, Double(a[oa + e])); mb = max(mb, Double(b[ob + e])) }
    var sa = 0.0, sb = 0.0
    for e in 0..<n { sa += exp(Double(a[oa + e]) - ma); sb += exp(Double(b[ob + e]) - mb) }
    let lseA = ma + log(sa), lseB = mb + log(sb)
    var kl = 0.0
    for e in 0..<n {
        let xa = Double(a[oa + e]) - lseA
        let p = exp(xa)
        if p > 0 { kl += p * (xa - (Double(b[ob + e]) - lseB)) }
    }
    return max(0, kl)
}

/// Compares side A (behaviour) with side B (training), joined on uid and row position, over the
/// uids of `options.uidShard`: the exact, mergeable tallies (``DiffPartial``). Zero shared uids is
/// not an error here (a part may hold none); ``diffTraces(a:b:options:)`` checks it.
///
/// Memory does not depend on the order of the records on either side, nor on how they are sharded:
/// complete files are read through their indexes in a planned order (``JoinPlan``), and a record
/// waits for its partner in memory up to `options.memoryBudget`, beyond it in a temporary file in
/// `options.spillDirectory` that is removed when the process ends. Pipes and unfinished files are
/// read as streams, with the same budget and file.
public func diffPartial(a pathsA: [String], b pathsB: [String], options: DiffOptions = DiffOptions()) throws -> DiffPartial {
    try runDiff(a: pathsA, b: pathsB, options: options).partial
}

/// ``diffPartial(a:b:options:)``, and how its join ran.
public func diffPartialAndJoin(a pathsA: [String], b pathsB: [String], options: DiffOptions = DiffOptions()) throws -> (partial: DiffPartial, join: JoinStats) {
    try runDiff(a: pathsA, b: pathsB, options: options)
}

/// Compares side A (behaviour) with side B (training), joined on uid and row position.
///
/// Throws when no sequence, or no row position, is in both sides. See ``diffPartial(a:b:options:)``
/// for how memory stays bounded.
public func diffTraces(a pathsA: [String], b pathsB: [String], options: DiffOptions = DiffOptions()) throws -> DiffReport {
    let (p, stats) = try runDiff(a: pathsA, b: pathsB, options: options)
    try p.checkMatched()
    var rep = DiffReport(partial: p)
    rep.join = stats
    return rep
}

func runDiff(a pathsA: [String], b pathsB: [String], options: DiffOptions) throws -> (partial: DiffPartial, join: JoinStats) {
    let filesA = try expandTracePaths(pathsA), filesB = try expandTracePaths(pathsB)
    let ra = try openAll(filesA), rb = try openAll(filesB)
    let ga = ra[0].header.model, gb = rb[0].header.model
    try checkSameGeometry(ga, gb, filesA[0], filesB[0])
    let L = ga.moeLayers, k = ga.topK, E = ga.numExperts
    let threads = max(1, options.threads)
    for r in ra + rb { r.threads = threads }
    try PolicyAcc.validate(thresholds: options.isThresholds)
    let shard = options.uidShard
    var part = DiffPartial(inputs: [DiffInput(a: filesA, b: filesB, uidShards: ShardSet(count: shard.count, indices: [shard.index]))],
                           model: ModelGeometry(numLayers: ga.numLayers, numExperts: E, topK: k, layerMap: ga.layerMap),
                           buckets: options.buckets, top: options.top, isThresholds: options.isThresholds)
    part.hasLogits = ra.allSatisfy { $0.header.columns.routerLogits != nil } && rb.allSatisfy { $0.header.columns.routerLogits != nil }
    part.hasWeights = ra.allSatisfy { $0.header.columns.topkWeights != nil } && rb.allSatisfy { $0.header.columns.topkWeights != nil }
    part.hasLogprobs = ra.allSatisfy { $0.header.columns.logprobs } && rb.allSatisfy { $0.header.columns.logprobs }

    var batch: [(TraceRecord, TraceRecord)] = []
    var batchRows = 0
    var acc = part.acc
    let topKeep = options.top

    func flush() {
        if batch.isEmpty { return }
        let nt = min(threads, batch.count)
        let parts = SharedSlots<DiffAcc>(count: nt)
        let work = UncheckedBox(value: batch)
        DispatchQueue.concurrentPerform(iterations: nt) { t in
            var local = DiffAcc(L: L, k: k, E: E, buckets: options.buckets, isThresholds: options.isThresholds)
            var mark = [UInt32](repeating: 0, count: 65_536)
            var stamp: UInt32 = 0
            var i = t
            while i < work.value.count {
                local.add(work.value[i].0, work.value[i].1, mark: &mark, stamp: &stamp)
                i += nt
            }
            parts.set(t, local)
        }
        for t in 0..<nt { acc.merge(parts.get(t)) }
        if acc.top.count > 4 * topKeep + 1024 { acc.keepTop(topKeep) }
        batch.removeAll(keepingCapacity: true)
        batchRows = 0
    }
    var join = JoinOptions()
    join.memoryBudget = options.memoryBudget
    join.spillDirectory = options.spillDirectory
    join.window = threads
    join.shard = shard
    join.stream = options.streamJoin
    let stats = try joinByUID(a: ra, b: rb, options: join) { x, y in
        part.sequencesMatched += 1
        batch.append((x, y))
        batchRows += min(x.rowCount, y.rowCount) + 1
        if batchRows >= 8192 || batch.count >= 512 { flush() }
    }
    flush()
    // Rows of sequences only one side has are rows present in only that side.
    acc.rowsOnlyA += stats.rowsOnlyA
    acc.rowsOnlyB += stats.rowsOnlyB
    acc.keepTop(topKeep)
    part.acc = acc
    part.sequencesOnlyA = stats.sequencesOnlyA
    part.sequencesOnlyB = stats.sequencesOnlyB
    return (part, stats)
}

/// Result slots written by concurrent workers, each slot by one worker.
final class SharedSlots<T>: @unchecked Sendable {
    private var slots: [T?]
    init(count: Int) { slots = Array(repeating: nil, count: count) }
    func set(_ i: Int, _ v: T) { slots.withUnsafeMutableBufferPointer { $0[i] = v } }
    func get(_ i: Int) -> T { slots[i]! }
}
