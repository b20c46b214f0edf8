import RTrace

/// The order in which a join by uid reads two sides of complete files, from their indexes alone.
///
/// The unit is a run of the records that start in a few consecutive chunks (``RecordRun``). Records
/// whose partner has not been read yet wait (in memory up to a budget, beyond it in a spill file), so
/// the plan weighs candidate orders by what they cost: rows spilled (simulated: the records whose
/// partner comes last are spilled first) and rows decoded twice (a chunk two runs share, read once
/// only when the runs are read one after the other). Candidates: file order on both sides, and orders
/// that move each side's runs next to their partners' (a barycentric heuristic, alternating sides),
/// with runs of 1 to 64 chunks. B reversed against A, or B written in another shard order, then
/// spills nothing; records in a random order spill about half a side whatever the order.
struct JoinPlan {
    /// Reads, in order: a reader (A's readers first, then B's) and one of its runs.
    var steps: [(reader: Int, run: RecordRun)] = []
    /// Per reader (A's, then B's) and record ordinal: the pair the record belongs to, or -1 (a record
    /// only one side has, or outside the uid shard).
    var pairAt: [[Int32]] = []
    /// Per pair, the step that reads A's record and the step that reads B's.
    var stepA: [Int] = [], stepB: [Int] = []
    /// Sequences (and their rows) only one side has; they are not read at all.
    var onlyA = 0, onlyB = 0, rowsOnlyA = 0, rowsOnlyB = 0
    /// What the chosen order costs, in rows: rows waiting at once at most, rows the budget makes
    /// spill, and rows of chunks decoded twice.
    var peakWaitingRows = 0, spilledRows = 0, redecodedRows = 0

    /// A side: its readers' indexes, and where each selected uid is.
    private struct Side {
        var readers: [TraceReader]
        var whereUID: [String: (reader: Int, ordinal: Int)] = [:]

        init(_ rs: [TraceReader], _ name: String, _ shard: UIDShard) throws(TraceError) {
            readers = rs
            for (i, r) in rs.enumerated() {
                for (o, rec) in r.index!.records.enumerated() where shard.contains(rec.uid) {
                    if let prev = whereUID.updateValue((i, o), forKey: rec.uid) {
                        let also = prev.reader == i ? "records \(prev.ordinal) and \(o)" : "also in \(rs[prev.reader].source.name)"
                        throw TraceError(.invalidInput, "uid \(rec.uid) appears twice in side \(name) (\(also))", file: r.source.name)
                    }
                }
            }
        }

        /// Runs of `per` chunks over all files, in file order, and the run of each record.
        func runs(_ per: Int) -> (runs: [(reader: Int, run: RecordRun)], runOf: [[Int]]) {
            var out: [(Int, RecordRun)] = [], runOf: [[Int]] = []
            for (i, r) in readers.enumerated() {
                var of = [Int](repeating: -1, count: r.index!.records.count)
                for run in r.index!.recordRuns(chunksPerRun: per) {
                    for o in run.records { of[o] = out.count }
                    out.append((i, run))
                }
                runOf.append(of)
            }
            return (out, runOf)
        }
    }

    /// Plans the join of `a` and `b` (every reader with an index) over the uids of `shard`, for a
    /// join that keeps `budgetRows` rows waiting in memory. Throws when a uid appears twice on one side.
    init(a: [TraceReader], b: [TraceReader], shard: UIDShard, budgetRows: Int = 1 << 16) throws(TraceError) {
        let sa = try Side(a, "A", shard), sb = try Side(b, "B", shard)
        // Pairs in A's file order: where each side's record is, and its rows (+1, so empty records weigh).
        var locA: [(reader: Int, ordinal: Int)] = [], locB = locA, rowsA: [Int] = [], rowsB: [Int] = []
        pairAt = (a + b).map { [Int32](repeating: -1, count: $0.index!.records.count) }
        for (ri, r) in a.enumerated() {
            for (o, rec) in r.index!.records.enumerated() where shard.contains(rec.uid) {
                guard let w = sb.whereUID[rec.uid] else { onlyA += 1; rowsOnlyA += rec.rowCount; continue }
                pairAt[ri][o] = Int32(locA.count)
                pairAt[a.count + w.reader][w.ordinal] = Int32(locA.count)
                locA.append((ri, o)); locB.append(w)
                rowsA.append(rec.rowCount + 1); rowsB.append(b[w.reader].index!.records[w.ordinal].rowCount + 1)
            }
        }
        for w in sb.whereUID.values where pairAt[a.count + w.reader][w.ordinal] < 0 {
            onlyB += 1
            rowsOnlyB += b[w.reader].index!.records[w.ordinal].rowCount
        }
        let n = locA.count

        /// One candidate: each side cut into runs of `per` chunks, the runs holding pairs.
        struct Layout {
            var runsA: [(reader: Int, run: RecordRun)], runsB: [(reader: Int, run: RecordRun)]
            var runA: [Int], runB: [Int]
            var pairsOfA: [[Int]], pairsOfB: [[Int]]
        }
        func layout(_ per: Int) -> Layout {
            let (ra, ofA) = sa.runs(per), (rb, ofB) = sb.runs(per)
            var l = Layout(runsA: ra, runsB: rb, runA: [], runB: [], pairsOfA: Array(repeating: [], count: ra.count),
                           pairsOfB: Array(repeating: [], count: rb.count))
            for p in 0..<n {
                l.runA.append(ofA[locA[p].reader][locA[p].ordinal]); l.runB.append(ofB[locB[p].reader][locB[p].ordinal])
                l.pairsOfA[l.runA[p]].append(p); l.pairsOfB[l.runB[p]].append(p)
            }
            return l
        }

        /// Interleaves the two sides' run orders greedily (next: the run that adds the fewest waiting rows).
        func merge(_ l: Layout, _ oa: [Int], _ ob: [Int]) -> [(side: Int, run: Int)] {
            var readA = [Bool](repeating: false, count: n), readB = readA
            var i = 0, j = 0
            var out: [(Int, Int)] = []
            out.reserveCapacity(oa.count + ob.count)
            func delta(_ side: Int, _ run: Int) -> Int {
                var d = 0
                if side == 0 { for p in l.pairsOfA[run] { d += readB[p] ? -rowsB[p] : rowsA[p] } }
                else { for p in l.pairsOfB[run] { d += readA[p] ? -rowsA[p] : rowsB[p] } }
                return d
            }
            while i < oa.count || j < ob.count {
                let da = i < oa.count ? delta(0, oa[i]) : Int.max, db = j < ob.count ? delta(1, ob[j]) : Int.max
                // Ties go to the side that is behind (by the fraction of its runs read).
                if da < db || (da == db && i * max(1, ob.count) <= j * max(1, oa.count)) {
                    for p in l.pairsOfA[oa[i]] { readA[p] = true }
                    out.append((0, oa[i])); i += 1
                } else {
                    for p in l.pairsOfB[ob[j]] { readB[p] = true }
                    out.append((1, ob[j])); j += 1
                }
            }
            return out
        }

        /// What an order costs: rows waiting at most, rows spilled past `budgetRows` (the records
        /// whose partner comes last first), rows of chunks decoded twice.
        func cost(_ l: Layout, _ order: [(side: Int, run: Int)]) -> (peak: Int, spilled: Int, redecoded: Int) {
            var stepOfA = [Int](repeating: 0, count: n), stepOfB = stepOfA
            for (s, (side, run)) in order.enumerated() {
                for p in side == 0 ? l.pairsOfA[run] : l.pairsOfB[run] { if side == 0 { stepOfA[p] = s } else { stepOfB[p] = s } }
            }
            var waiting = 0, inMemory = 0, peak = 0, spilled = 0, redecoded = 0
            var where_ = [UInt8](repeating: 0, count: n)  // 0 not waiting, 1 in memory, 2 spilled
            var heap = MaxHeap<Int>()
            // A chunk two runs share is decoded once when the second run of its file comes within
            // RecordRunReader.reuseDistance steps of the first (the reader keeps a run's end chunks that long).
            var lastStep: [Int: (step: Int, first: Int, last: Int)] = [:]
            var decoded = Set<Int>()
            for (s, (side, run)) in order.enumerated() {
                let (reader, rr) = side == 0 ? l.runsA[run] : l.runsB[run]
                let file = side == 0 ? reader : a.count + reader
                let ix = (side == 0 ? a : b)[reader].index!
                let prev = lastStep[file].flatMap { s - $0.step <= RecordRunReader.reuseDistance ? $0 : nil }
                for c in rr.chunks where !(prev.map { c == $0.first || c == $0.last } ?? false) {
                    if !decoded.insert(file << 32 | c).inserted { redecoded += ix.chunks[c].rowCount }
                }
                lastStep[file] = (s, rr.chunks.lowerBound, rr.chunks.upperBound - 1)
                for p in side == 0 ? l.pairsOfA[run] : l.pairsOfB[run] {
                    let partnerRead = side == 0 ? stepOfB[p] < s : stepOfA[p] < s
                    let mine = side == 0 ? rowsA[p] : rowsB[p], theirs = side == 0 ? rowsB[p] : rowsA[p]
                    if partnerRead {
                        waiting -= theirs
                        if where_[p] == 1 { inMemory -= theirs }
                        where_[p] = 0
                    } else {
                        waiting += mine
                        inMemory += mine
                        where_[p] = 1
                        heap.push(side == 0 ? stepOfB[p] : stepOfA[p], p)
                        while inMemory > budgetRows, let (_, v) = heap.pop() {
                            guard where_[v] == 1 else { continue }
                            let r = stepOfA[v] < stepOfB[v] ? rowsA[v] : rowsB[v]
                            where_[v] = 2; inMemory -= r; spilled += r
                        }
                    }
                }
                peak = max(peak, waiting)
            }
            return (peak, spilled, redecoded)
        }

        /// Sorts `runs` by the median position of their partners under `rank` (stable for ties).
        func byPartners(_ runs: [Int], _ pairsOf: [[Int]], _ partnerRun: [Int], _ rank: [Int]) -> [Int] {
            let keys = runs.map { r -> Int in
                let ps = pairsOf[r].map { rank[partnerRun[$0]] }.sorted()
                return ps[(ps.count - 1) / 2]
            }
            return runs.indices.sorted { keys[$0] != keys[$1] ? keys[$0] < keys[$1] : $0 < $1 }.map { runs[$0] }
        }
        /// Each run's position in `order`, scaled to one range so that sides with different run counts compare.
        func ranks(_ order: [Int], _ runs: Int) -> [Int] {
            var m = [Int](repeating: 0, count: runs)
            for (i, r) in order.enumerated() { m[r] = i * 1_000_000 / max(1, order.count) }
            return m
        }

        // A spilled row costs about what decoding two rows does (write and read back vs inflate).
        func total(_ c: (peak: Int, spilled: Int, redecoded: Int)) -> Int { 2 * c.spilled + c.redecoded }
        var best: (layout: Layout, order: [(side: Int, run: Int)], cost: (peak: Int, spilled: Int, redecoded: Int))? = nil
        var seen = Set<Int>()
        for per in [1, 4, 16, 64] {
            let l = layout(per)
            // Few chunks per file: larger runs give the same layout.
            guard seen.insert(l.runsA.count << 32 | l.runsB.count).inserted else { continue }
            let oa = l.runsA.indices.filter { !l.pairsOfA[$0].isEmpty }, ob = l.runsB.indices.filter { !l.pairsOfB[$0].isEmpty }
            var candidates = [(oa, ob)]
            var xa = oa, xb = ob
            for _ in 0..<3 {
                xb = byPartners(xb, l.pairsOfB, l.runA, ranks(xa, l.runsA.count)); candidates.append((xa, xb))
                xa = byPartners(xa, l.pairsOfA, l.runB, ranks(xb, l.runsB.count)); candidates.append((xa, xb))
            }
            for (ca, cb) in candidates {
                let order = merge(l, ca, cb)
                let c = cost(l, order)
                if best == nil || (total(c), c.peak) < (total(best!.cost), best!.cost.peak) { best = (l, order, c) }
            }
            if total(best!.cost) == 0 && best!.cost.peak <= budgetRows / 4 { break }
        }
        let (l, order, c) = best!
        peakWaitingRows = c.peak; spilledRows = c.spilled; redecodedRows = c.redecoded
        stepA = [Int](repeating: 0, count: n)
        stepB = stepA
        for (s, (side, run)) in order.enumerated() {
            if side == 0 {
                steps.append(l.runsA[run])
                for p in l.pairsOfA[run] { stepA[p] = s }
            } else {
                steps.append((a.count + l.runsB[run].reader, l.runsB[run].run))
                for p in l.pairsOfB[run] { stepB[p] = s }
            }
        }
    }
}
