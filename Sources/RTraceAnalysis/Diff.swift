import Dispatch
import Foundation
import RTrace

/// Options of ``diffTraces(a:b:options:)``.
public struct DiffOptions: Sendable {
    /// Position buckets: row position relative to the sequence length, split in this many equal parts.
    public var buckets: Int = 4
    /// How many sequences with the most flipped rows to list.
    public var top: Int = 10
    /// Worker threads for the comparison (decoding uses the readers' own threads).
    public var threads: Int = max(1, ProcessInfo.processInfo.activeProcessorCount)
    /// Thresholds C of the importance-sampling and rejection rules in the policy report (verl's
    /// `rollout_is_threshold` / `rollout_rs_threshold`); each must be finite and > 0.
    public var isThresholds: [Double] = PolicyAcc.defaultThresholds
    public init(buckets: Int = 4, top: Int = 10, isThresholds: [Double] = PolicyAcc.defaultThresholds) {
        self.buckets = max(1, buckets)
        self.top = max(0, top)
        self.isThresholds = isThresholds
    }
}

/// Tallies of one comparison; partial tallies add up exactly (integer counts, sums merged in a fixed order).
///
/// The routing counts live in one histogram over (class, position bucket, layer, |A∩B|): the per-layer,
/// per-class, per-bucket and layer × bucket views are its sums, so comparing a (row, layer) costs one
/// increment.
struct DiffAcc {
    let L: Int, k: Int, E: Int, nb: Int
    /// (row, layer)s by intersection size |A∩B| (0…k), class (0 prompt, 1 response), position bucket
    /// and layer: `[((c*nb+b)*L+l)*(k+1)+i]`.
    var cells: [Int]
    /// (row, layer)s whose slot order differs, `[(c*nb+b)*L+l]`.
    var orderCells: [Int]
    var klSum: [Double], klN: [Int]
    var wSum: [Double], wN: [Int]
    /// Per class: rows with at least one compared layer, rows with a flipped layer, flipped (row, layer)s.
    var rows = [0, 0], anyFlip = [0, 0], flippedLayers = [0, 0]
    /// Per bucket: rows with a compared layer, rows with a flipped layer.
    var brows: [Int], bany: [Int]
    var matchedRows = 0, rowsOnlyA = 0, rowsOnlyB = 0
    var missingA = 0, missingB = 0, skippedLayerRows = 0
    /// Policy mismatch over response tokens with logprobs on both sides (PolicyMetrics.swift).
    var policy: PolicyAcc
    var top: [(uid: String, flipped: Int, rows: Int)] = []

    init(L: Int, k: Int, E: Int, buckets: Int, isThresholds: [Double] = PolicyAcc.defaultThresholds) {
        self.L = L; self.k = k; self.E = E; nb = buckets
        policy = PolicyAcc(layers: L, thresholds: isThresholds)
        cells = Array(repeating: 0, count: 2 * buckets * L * (k + 1))
        orderCells = Array(repeating: 0, count: 2 * buckets * L)
        klSum = Array(repeating: 0, count: L); klN = Array(repeating: 0, count: L)
        wSum = Array(repeating: 0, count: L); wN = Array(repeating: 0, count: L)
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
        for l in 0..<L { klSum[l] += o.klSum[l]; klN[l] += o.klN[l]; wSum[l] += o.wSum[l]; wN[l] += o.wN[l] }
        for c in 0..<2 { rows[c] += o.rows[c]; anyFlip[c] += o.anyFlip[c]; flippedLayers[c] += o.flippedLayers[c] }
        for b in 0..<nb { brows[b] += o.brows[b]; bany[b] += o.bany[b] }
        matchedRows += o.matchedRows; rowsOnlyA += o.rowsOnlyA; rowsOnlyB += o.rowsOnlyB
        missingA += o.missingA; missingB += o.missingB; skippedLayerRows += o.skippedLayerRows
        policy.merge(o.policy)
        top += o.top
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
                                            wSum[l] += s; wN[l] += n
                                        }
                                        if let la, let lb {
                                            klSum[l] += routerKL(la, (ra * L + l) * E, lb, (rb * L + l) * E, E)
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
        if flippedRows > 0 { top.append((a.uid, flippedRows, overlap)) }
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

/// The result of comparing two sides.
public struct DiffReport {
    var acc: DiffAcc
    public var layerMap: [Int]
    public var filesA: [String], filesB: [String]
    public var sequencesMatched = 0, sequencesOnlyA = 0, sequencesOnlyB = 0
    public var hasLogits = false, hasWeights = false, hasLogprobs = false
    public var topN = 10

    /// Position buckets (``DiffOptions/buckets``).
    public var buckets: Int { acc.nb }
    /// Per MoE layer and position bucket, `[layer * buckets + bucket]`: compared (row, layer)s, and
    /// those whose top-k set differs (summed over layers, a bucket's counts give its flip rate).
    public var gridCompared: [Int] { acc.grid(flipped: false) }
    public var gridFlipped: [Int] { acc.grid(flipped: true) }

    struct Summary { var n = 0, flips = 0, oflips = 0, jacc = 0.0, changed = 0 }

    func summarize(_ h: ArraySlice<Int>, oflips: Int) -> Summary {
        let k = acc.k
        var s = Summary(oflips: oflips)
        for (i, c) in h.enumerated() {
            s.n += c
            if i < k { s.flips += c }
            s.jacc += Double(c) * Double(i) / Double(2 * k - i)
            s.changed += c * (k - i)
        }
        return s
    }

    func cell(layer l: Int, cls: [Int]) -> Summary {
        var t = Summary()
        for c in cls {
            let (h, o) = acc.layerCell(c, l)
            let s = summarize(h[...], oflips: o)
            t.n += s.n; t.flips += s.flips; t.oflips += s.oflips; t.jacc += s.jacc; t.changed += s.changed
        }
        return t
    }

    func total(cls: [Int]) -> Summary {
        var t = Summary()
        for l in 0..<acc.L {
            let s = cell(layer: l, cls: cls)
            t.n += s.n; t.flips += s.flips; t.oflips += s.oflips; t.jacc += s.jacc; t.changed += s.changed
        }
        return t
    }

    func ratio(_ a: Double, _ n: Int) -> Double? { n > 0 ? a / Double(n) : nil }

    func summaryJSON(_ s: Summary, rows: Int, any: Int, flippedLayers: Int) -> [String: Any] {
        [
            "layer_rows": s.n, "rows": rows,
            "flip_rate": jnum(ratio(Double(s.flips), s.n)),
            "ordered_flip_rate": jnum(ratio(Double(s.oflips), s.n)),
            "jaccard": jnum(ratio(s.jacc, s.n)),
            "mean_experts_changed": jnum(ratio(Double(s.changed), s.n)),
            "token_any_layer_flip": jnum(ratio(Double(any), rows)),
            "mean_flipped_layers_per_row": jnum(ratio(Double(flippedLayers), rows)),
        ]
    }

    /// Sequences with the most flipped rows (ties by uid).
    public var topSequences: [(uid: String, flipped: Int, rows: Int)] {
        Array(acc.top.sorted { $0.flipped != $1.flipped ? $0.flipped > $1.flipped : $0.uid < $1.uid }.prefix(topN))
    }

    /// The report as a JSON object (keys documented in spec/cli-json.md).
    public var json: [String: Any] {
        let all = total(cls: [0, 1])
        let rows = acc.rows[0] + acc.rows[1], any = acc.anyFlip[0] + acc.anyFlip[1]
        let fl = acc.flippedLayers[0] + acc.flippedLayers[1]
        var o = summaryJSON(all, rows: rows, any: any, flippedLayers: fl)
        o["a"] = filesA; o["b"] = filesB
        o["top_k"] = acc.k; o["num_experts"] = acc.E
        o["matched"] = [
            "sequences": sequencesMatched, "sequences_only_a": sequencesOnlyA, "sequences_only_b": sequencesOnlyB,
            "rows": acc.matchedRows, "rows_only_a": acc.rowsOnlyA, "rows_only_b": acc.rowsOnlyB,
            "layer_rows_compared": all.n, "layer_rows_skipped": acc.skippedLayerRows,
            "layer_rows_missing_a": acc.missingA, "layer_rows_missing_b": acc.missingB,
        ]
        var kls = 0.0, kln = 0, ws = 0.0, wn = 0
        var per: [[String: Any]] = []
        for l in 0..<acc.L {
            let s = cell(layer: l, cls: [0, 1])
            var p = summaryJSON(s, rows: 0, any: 0, flippedLayers: 0)
            for key in ["rows", "token_any_layer_flip", "mean_flipped_layers_per_row"] { p[key] = nil }
            p["layer"] = layerMap[l]
            p["moe_index"] = l
            p["router_kl"] = hasLogits ? jnum(ratio(acc.klSum[l], acc.klN[l])) : NSNull()
            p["weight_mae"] = hasWeights ? jnum(ratio(acc.wSum[l], acc.wN[l])) : NSNull()
            kls += acc.klSum[l]; kln += acc.klN[l]; ws += acc.wSum[l]; wn += acc.wN[l]
            per.append(p)
        }
        o["per_layer"] = per
        o["router_kl"] = hasLogits ? jnum(ratio(kls, kln)) : NSNull()
        o["weight_mae"] = hasWeights ? jnum(ratio(ws, wn)) : NSNull()
        o["prompt"] = summaryJSON(total(cls: [0]), rows: acc.rows[0], any: acc.anyFlip[0], flippedLayers: acc.flippedLayers[0])
        o["response"] = summaryJSON(total(cls: [1]), rows: acc.rows[1], any: acc.anyFlip[1], flippedLayers: acc.flippedLayers[1])
        var bs: [[String: Any]] = []
        let k1 = acc.k + 1
        let bhist = acc.bhist, boflips = acc.boflips
        for b in 0..<acc.nb {
            let s = summarize(bhist[b * k1..<(b + 1) * k1], oflips: boflips[b])
            var j = summaryJSON(s, rows: acc.brows[b], any: acc.bany[b], flippedLayers: 0)
            j["mean_flipped_layers_per_row"] = jnum(ratio(Double(s.flips), acc.brows[b]))
            j["bucket"] = b
            j["from"] = Double(b) / Double(acc.nb); j["to"] = Double(b + 1) / Double(acc.nb)
            bs.append(j)
        }
        o["buckets"] = bs
        o["policy"] = policy?.jsonObject ?? NSNull()
        o["top"] = topSequences.map { ["uid": $0.uid, "flipped_rows": $0.flipped, "rows": $0.rows] as [String: Any] }
        return o
    }

    /// Per-layer rows as CSV.
    public var csv: String {
        var s = "layer,moe_index,layer_rows,flip_rate,ordered_flip_rate,jaccard,mean_experts_changed,router_kl,weight_mae\n"
        for l in 0..<acc.L {
            let c = cell(layer: l, cls: [0, 1])
            func v(_ x: Double?) -> String { x.map { "\($0)" } ?? "" }
            s += "\(layerMap[l]),\(l),\(c.n),\(v(ratio(Double(c.flips), c.n))),\(v(ratio(Double(c.oflips), c.n))),"
            s += "\(v(ratio(c.jacc, c.n))),\(v(ratio(Double(c.changed), c.n))),"
            s += "\(hasLogits ? v(ratio(acc.klSum[l], acc.klN[l])) : ""),\(hasWeights ? v(ratio(acc.wSum[l], acc.wN[l])) : "")\n"
        }
        return s
    }

    /// An aligned table for people.
    public var text: String {
        let j = json
        let m = j["matched"] as! [String: Any]
        func g(_ d: [String: Any], _ k: String, _ digits: Int = 4) -> String { fmt(d[k] as? Double, digits) }
        var s = "sequences: \(m["sequences"]!) matched, \(m["sequences_only_a"]!) only in A, \(m["sequences_only_b"]!) only in B\n"
        s += "rows: \(m["rows"]!) matched, \(m["rows_only_a"]!) only in A, \(m["rows_only_b"]!) only in B; "
        s += "(row, layer)s compared \(m["layer_rows_compared"]!), skipped as missing \(m["layer_rows_skipped"]!)\n\n"
        var rows: [[String]] = [["layer", "rows", "flip", "ordered", "jaccard", "changed", "router_kl", "weight_mae"]]
        for p in j["per_layer"] as! [[String: Any]] {
            rows.append(["\(p["layer"]!)", "\(p["layer_rows"]!)", g(p, "flip_rate"), g(p, "ordered_flip_rate"), g(p, "jaccard"),
                         g(p, "mean_experts_changed", 3), g(p, "router_kl", 6), g(p, "weight_mae", 6)])
        }
        rows.append(["all", "\(m["layer_rows_compared"]!)", g(j, "flip_rate"), g(j, "ordered_flip_rate"), g(j, "jaccard"),
                     g(j, "mean_experts_changed", 3), g(j, "router_kl", 6), g(j, "weight_mae", 6)])
        s += table(rows) + "\n"
        var r2: [[String]] = [["rows", "count", "flip", "any_layer_flip", "flipped_layers/row"]]
        for key in ["prompt", "response"] {
            let d = j[key] as! [String: Any]
            r2.append([key, "\(d["rows"]!)", g(d, "flip_rate"), g(d, "token_any_layer_flip"), g(d, "mean_flipped_layers_per_row", 3)])
        }
        for d in j["buckets"] as! [[String: Any]] {
            r2.append(["pos \(fmt(d["from"] as? Double, 2))–\(fmt(d["to"] as? Double, 2))", "\(d["rows"]!)", g(d, "flip_rate"),
                       g(d, "token_any_layer_flip"), g(d, "mean_flipped_layers_per_row", 3)])
        }
        r2.append(["all", "\(acc.rows[0] + acc.rows[1])", g(j, "flip_rate"), g(j, "token_any_layer_flip"), g(j, "mean_flipped_layers_per_row", 3)])
        s += table(r2)
        if let p = policy { s += "\n" + p.text }
        let top = topSequences
        if !top.isEmpty {
            s += "\nmost flipped sequences:\n"
            s += table([["uid", "flipped_rows", "rows"]] + top.map { [$0.uid, "\($0.flipped)", "\($0.rows)"] })
        }
        return s
    }
}

/// Compares side A (behaviour) with side B (training), joined on uid and row position.
public func diffTraces(a pathsA: [String], b pathsB: [String], options: DiffOptions = DiffOptions()) throws -> DiffReport {
    let filesA = try expandTracePaths(pathsA), filesB = try expandTracePaths(pathsB)
    let ra = try openAll(filesA), rb = try openAll(filesB)
    let ga = ra[0].header.model, gb = rb[0].header.model
    try checkSameGeometry(ga, gb, filesA[0], filesB[0])
    let L = ga.moeLayers, k = ga.topK, E = ga.numExperts
    let threads = max(1, options.threads)
    // Each side decodes a window of `threads` chunks ahead (halving it, as the two sides decode at the
    // same time, was measured: no faster and no smaller).
    for r in ra + rb { r.threads = threads }
    try PolicyAcc.validate(thresholds: options.isThresholds)
    var rep = DiffReport(acc: DiffAcc(L: L, k: k, E: E, buckets: options.buckets, isThresholds: options.isThresholds), layerMap: ga.layerMap, filesA: filesA, filesB: filesB)
    rep.topN = options.top
    rep.hasLogits = ra.allSatisfy { $0.header.columns.routerLogits != nil } && rb.allSatisfy { $0.header.columns.routerLogits != nil }
    rep.hasWeights = ra.allSatisfy { $0.header.columns.topkWeights != nil } && rb.allSatisfy { $0.header.columns.topkWeights != nil }
    rep.hasLogprobs = ra.allSatisfy { $0.header.columns.logprobs } && rb.allSatisfy { $0.header.columns.logprobs }

    let chA = streamRecords(ra), chB = streamRecords(rb)
    defer { chA.cancel(); chB.cancel() }
    var pendA: [String: TraceRecord] = [:], pendB: [String: TraceRecord] = [:]
    var batch: [(TraceRecord, TraceRecord)] = []
    var batchRows = 0
    var acc = rep.acc
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
        if acc.top.count > 4 * topKeep + 1024 {
            acc.top = Array(acc.top.sorted { $0.flipped != $1.flipped ? $0.flipped > $1.flipped : $0.uid < $1.uid }.prefix(topKeep))
        }
        batch.removeAll(keepingCapacity: true)
        batchRows = 0
    }
    func pair(_ x: TraceRecord, _ y: TraceRecord) {
        rep.sequencesMatched += 1
        batch.append((x, y))
        batchRows += min(x.rowCount, y.rowCount) + 1
        if batchRows >= 8192 || batch.count >= 512 { flush() }
    }
    var doneA = false, doneB = false
    while !(doneA && doneB) {
        if !doneA {
            if let r = try chA.take() {
                if let o = pendB.removeValue(forKey: r.uid) { pair(r, o) } else if pendA[r.uid] == nil { pendA[r.uid] = r }
                else { throw TraceError(.invalidInput, "uid \(r.uid) appears twice in side A") }
            } else { doneA = true }
        }
        if !doneB {
            if let r = try chB.take() {
                if let o = pendA.removeValue(forKey: r.uid) { pair(o, r) } else if pendB[r.uid] == nil { pendB[r.uid] = r }
                else { throw TraceError(.invalidInput, "uid \(r.uid) appears twice in side B") }
            } else { doneB = true }
        }
    }
    flush()
    // Rows of sequences only one side has are rows present in only that side.
    acc.rowsOnlyA += pendA.values.reduce(0) { $0 + $1.rowCount }
    acc.rowsOnlyB += pendB.values.reduce(0) { $0 + $1.rowCount }
    rep.acc = acc
    rep.sequencesOnlyA = pendA.count
    rep.sequencesOnlyB = pendB.count
    if rep.sequencesMatched == 0 {
        throw TraceError(.invalidInput, "no sequence is in both sides: A has \(pendA.count) uids, B has \(pendB.count), none shared (are these traces of the same rollouts?)")
    }
    if acc.matchedRows == 0 {
        throw TraceError(.invalidInput, "\(rep.sequencesMatched) sequences match by uid but no row position is in both sides")
    }
    return rep
}

/// Result slots written by concurrent workers, each slot by one worker.
final class SharedSlots<T>: @unchecked Sendable {
    private var slots: [T?]
    init(count: Int) { slots = Array(repeating: nil, count: count) }
    func set(_ i: Int, _ v: T) { slots.withUnsafeMutableBufferPointer { $0[i] = v } }
    func get(_ i: Int) -> T { slots[i]! }
}
