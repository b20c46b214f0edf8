import Foundation
import RTrace

/// How a join by uid runs.
struct JoinOptions {
    /// Bytes of records kept in memory while they wait for their partner; the rest wait on disk.
    var memoryBudget = 12 << 20
    /// Where the spill file goes (nil: the temporary directory).
    var spillDirectory: String? = nil
    /// Chunks decoded at once.
    var window = 8
    /// The uids to join (others are skipped).
    var shard = UIDShard.all
    /// Join as a stream even when every file has an index (tests use it).
    var stream = false
}

/// What a join found besides its pairs, and how it ran.
public struct JoinStats: Sendable, Equatable {
    /// Whether the files were read in a planned order through their indexes (else as two streams).
    public var planned = false
    /// Sequences, and their rows, that only one side has.
    public var sequencesOnlyA = 0, sequencesOnlyB = 0, rowsOnlyA = 0, rowsOnlyB = 0
    /// Records that waited on disk, their bytes, and the most bytes waiting on disk at once.
    public var spilledRecords = 0, spilledBytes = 0, peakSpillBytes = 0
    /// The most bytes of records waiting in memory at once.
    public var peakMemoryBytes = 0
    /// Planned joins: runs read, chunks decoded (a chunk decoded twice counts twice), and what the
    /// plan expected, in rows: waiting at once at most, spilled, decoded twice.
    public var runsRead = 0, chunksDecoded = 0, plannedPeakRows = 0, plannedSpilledRows = 0, plannedRedecodedRows = 0

    /// One line for people (`rtrace diff --join-stats`).
    public var text: String {
        func mb(_ b: Int) -> String { String(format: "%.1f MB", Double(b) / 1e6) }
        var s = planned ? "join: planned from the indexes, \(runsRead) runs read, \(chunksDecoded) chunks decoded; "
            : "join: two streams (a side has no index); "
        s += "waiting records: at most \(mb(peakMemoryBytes)) in memory, \(spilledRecords) spilled (\(mb(spilledBytes)) written, at most \(mb(peakSpillBytes)) on disk)"
        if planned { s += "; plan: at most \(plannedPeakRows) rows waiting, \(plannedSpilledRows) spilled, \(plannedRedecodedRows) decoded twice" }
        return s
    }
}

/// Joins two sides on uid and calls `pair(a, b)` for each uid both have, in memory bounded by the
/// decode window, `options.memoryBudget` and the largest record, whatever the order of the records.
///
/// When every file has an index, a ``JoinPlan`` orders the reads and records wait in memory or on
/// disk by when their partner comes; otherwise (a pipe, an unfinished file) both sides stream in
/// file order and waiting records beyond the budget go to a spill file, oldest first.
func joinByUID(a: [TraceReader], b: [TraceReader], options: JoinOptions, _ pair: (TraceRecord, TraceRecord) throws -> Void) throws -> JoinStats {
    var stats = JoinStats()
    /// Meets a record with its partner waiting under `key`, or makes it wait.
    func meet<Key>(_ store: inout PendingStore<Key>, _ key: Key, _ side: Int, _ r: TraceRecord, priority: Int) throws {
        if let (s, other) = try store.take(key) {
            precondition(s != side, "a record waits on the side its partner came from")
            if side == 0 { try pair(r, other) } else { try pair(other, r) }
        } else {
            try store.put(r, key: key, side: side, priority: priority)
        }
    }
    func finish<Key>(_ store: PendingStore<Key>) {
        stats.spilledRecords = store.spilledRecords
        stats.spilledBytes = store.spilledBytes
        stats.peakSpillBytes = store.peakSpillBytes
        stats.peakMemoryBytes = store.peakMemoryBytes
    }
    if !options.stream && (a + b).allSatisfy({ $0.index != nil }) {
        // The budget in rows, at the widest row either side stores.
        let rowBytes = (a + b).map { r -> Int in
            let h = r.header, L = h.model.moeLayers, k = h.model.topK
            return 2 * L * k + (h.columns.topkWeights?.size ?? 0) * L * k + (h.columns.routerLogits?.size ?? 0) * L * h.model.numExperts + 8
        }.max() ?? 1
        let plan = try JoinPlan(a: a, b: b, shard: options.shard, budgetRows: options.memoryBudget / max(1, rowBytes))
        stats.planned = true
        stats.sequencesOnlyA = plan.onlyA; stats.sequencesOnlyB = plan.onlyB
        stats.rowsOnlyA = plan.rowsOnlyA; stats.rowsOnlyB = plan.rowsOnlyB
        stats.runsRead = plan.steps.count
        stats.plannedPeakRows = plan.peakWaitingRows; stats.plannedSpilledRows = plan.spilledRows; stats.plannedRedecodedRows = plan.redecodedRows
        let runs = try RecordRunReader(readers: a + b, window: options.window)
        // The decode windows are the reader's buffer: the queue only hands records over (2 MB, or one record).
        let ch = BoundedChannel<(side: Int, pair: Int, record: TraceRecord)>(capacity: 1024, maxWeight: 2 << 20) {
            RecordSpill.memoryBytes($0.record)
        }
        defer { ch.cancel() }
        let shared = UncheckedBox(value: (plan, a.count))
        startProducer(ch) {
            let (plan, na) = shared.value
            try runs.forEachRecord(plan.steps) { step, ordinal, rec in
                let reader = plan.steps[step].reader, p = plan.pairAt[reader][ordinal]
                guard p >= 0 else { return }
                try ch.put((reader < na ? 0 : 1, Int(p), rec))
            }
        }
        // A record waits until its partner's step: the records needed last go to disk first.
        var store = PendingStore<Int>(budget: options.memoryBudget, spillDirectory: options.spillDirectory)
        while let (side, p, rec) = try ch.take() {
            try meet(&store, p, side, rec, priority: side == 0 ? plan.stepB[p] : plan.stepA[p])
        }
        stats.chunksDecoded = runs.chunksDecoded
        guard store.count == 0 else {
            throw TraceError(.corrupt, "\(store.count) records found no partner although the indexes list one (is an index out of date?)")
        }
        finish(store)
    } else {
        let chA = streamRecords(a), chB = streamRecords(b)
        defer { chA.cancel(); chB.cancel() }
        var seen: [Set<String>] = [[], []]
        var arrival = 0
        var store = PendingStore<String>(budget: options.memoryBudget, spillDirectory: options.spillDirectory)
        func take(_ side: Int, _ ch: RecordChannel) throws -> Bool {
            guard let r = try ch.take() else { return false }
            guard options.shard.contains(r.uid) else { return true }
            guard seen[side].insert(r.uid).inserted else {
                throw TraceError(.invalidInput, "uid \(r.uid) appears twice in side \(side == 0 ? "A" : "B")")
            }
            arrival += 1
            try meet(&store, r.uid, side, r, priority: -arrival)
            return true
        }
        var moreA = true, moreB = true
        while moreA || moreB {
            if moreA { moreA = try take(0, chA) }
            if moreB { moreB = try take(1, chB) }
        }
        for w in store.waiting {
            if w.side == 0 { stats.sequencesOnlyA += 1; stats.rowsOnlyA += w.rows } else { stats.sequencesOnlyB += 1; stats.rowsOnlyB += w.rows }
        }
        finish(store)
    }
    return stats
}
