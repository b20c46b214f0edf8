import Foundation
import RTrace

/// Records of a join waiting for their partner, in memory up to a budget and in a spill file beyond.
///
/// Each record waits under a key (its uid, or its pair's number) with a priority: when the records in memory take more
/// than the budget, those with the highest priority go to the spill file first. A join that knows
/// when each partner will come (a plan over the files' indexes) gives that time as the priority, so
/// the records needed last wait on disk; a streaming join gives the arrival order, newest last.
struct PendingStore<Key: Hashable> {
    /// Bytes of records kept in memory.
    let budget: Int
    /// Where the spill file goes (nil: the temporary directory).
    let spillDirectory: String?

    /// Where a waiting record is: in ``inMemory`` (`offset` < 0) or at `offset` in the spill file.
    /// Small, so that many waiting records cost little besides their bytes.
    private struct Entry {
        var priority: Int, offset: Int, length: Int
        var rows: Int32, side: UInt8
        var onDisk: Bool { offset >= 0 }
    }
    private var entries: [Key: Entry] = [:]
    private var inMemory: [Key: TraceRecord] = [:]
    /// The keys of the records in memory by priority; stale items (records taken since) are skipped when popped.
    private var heap = MaxHeap<Key>()
    private var spill: SpillFile? = nil
    /// The buffer records are encoded into and read back through (as large as the largest record).
    private var scratch: [UInt8] = []
    private(set) var bytesInMemory = 0

    /// Records spilled, and the largest number of bytes waiting in memory and on disk.
    private(set) var spilledRecords = 0
    private(set) var peakMemoryBytes = 0
    var spilledBytes: Int { spill?.bytesWritten ?? 0 }
    var peakSpillBytes: Int { spill?.peakBytesHeld ?? 0 }

    init(budget: Int, spillDirectory: String? = nil) {
        self.budget = max(0, budget)
        self.spillDirectory = spillDirectory
    }

    /// Records waiting.
    var count: Int { entries.count }

    /// Adds a record; spills the highest-priority records while memory is over the budget.
    mutating func put(_ r: TraceRecord, key: Key, side: Int, priority: Int) throws(TraceError) {
        entries[key] = Entry(priority: priority, offset: -1, length: 0, rows: Int32(clamping: r.rowCount), side: UInt8(side))
        inMemory[key] = r
        bytesInMemory += RecordSpill.memoryBytes(r)
        heap.push(priority, key)
        while bytesInMemory > budget, let victim = heap.pop()?.value {
            guard let rec = inMemory.removeValue(forKey: victim) else { continue }
            if spill == nil { spill = try SpillFile(directory: spillDirectory ?? NSTemporaryDirectory()) }
            let n = RecordSpill.encode(rec, into: &scratch)
            entries[victim]!.offset = try spill!.append(scratch, count: n)
            entries[victim]!.length = n
            bytesInMemory -= RecordSpill.memoryBytes(rec)
            spilledRecords += 1
        }
        peakMemoryBytes = max(peakMemoryBytes, bytesInMemory)
        // Taken records leave stale heap items: rebuild when they outnumber the live ones.
        if heap.count > 64 && heap.count > 4 * inMemory.count { rebuildHeap() }
    }

    /// Removes and returns the record waiting under `key`, with its side.
    mutating func take(_ key: Key) throws(TraceError) -> (side: Int, record: TraceRecord)? {
        guard let e = entries.removeValue(forKey: key) else { return nil }
        if e.onDisk {
            try spill!.take(at: e.offset, count: e.length, into: &scratch)
            return (Int(e.side), RecordSpill.decode(scratch))
        }
        let r = inMemory.removeValue(forKey: key)!
        bytesInMemory -= RecordSpill.memoryBytes(r)
        return (Int(e.side), r)
    }

    /// Every waiting record's key, side and rows (the records themselves stay where they are).
    var waiting: [(key: Key, side: Int, rows: Int)] { entries.map { ($0.key, Int($0.value.side), Int($0.value.rows)) } }

    private mutating func rebuildHeap() {
        heap = MaxHeap()
        for k in inMemory.keys { heap.push(entries[k]!.priority, k) }
    }
}
