import Foundation
import RTrace

/// Records of a join waiting for their partner, in memory up to a budget and in a spill file beyond.
///
/// Each record waits under a key (its uid) with a priority: when the records in memory take more
/// than the budget, those with the highest priority go to the spill file first. A join that knows
/// when each partner will come (a plan over the files' indexes) gives that time as the priority, so
/// the records needed last wait on disk; a streaming join gives the arrival order, newest last.
struct PendingStore {
    /// Bytes of records kept in memory.
    let budget: Int
    /// Where the spill file goes (nil: the temporary directory).
    let spillDirectory: String?

    private enum Place { case memory(TraceRecord), disk(offset: Int, length: Int) }
    private struct Entry {
        var side: Int, rows: Int, priority: Int, bytes: Int
        var place: Place
    }
    private var entries: [String: Entry] = [:]
    /// Max-heap of (priority, key) over the entries in memory; stale items are skipped when popped.
    private var heap: [(priority: Int, key: String)] = []
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

    /// The side a record with `key` waits on, if one does.
    func side(of key: String) -> Int? { entries[key]?.side }

    /// Adds a record; spills the highest-priority records while memory is over the budget.
    mutating func put(_ r: TraceRecord, key: String, side: Int, priority: Int) throws(TraceError) {
        let bytes = RecordSpill.memoryBytes(r)
        entries[key] = Entry(side: side, rows: r.rowCount, priority: priority, bytes: bytes, place: .memory(r))
        bytesInMemory += bytes
        heapPush(priority, key)
        while bytesInMemory > budget, let victim = heapPop() {
            guard var e = entries[victim], case .memory(let rec) = e.place else { continue }
            if spill == nil { spill = try SpillFile(directory: spillDirectory ?? NSTemporaryDirectory()) }
            let n = RecordSpill.encode(rec, into: &scratch)
            e.place = .disk(offset: try spill!.append(scratch, count: n), length: n)
            entries[victim] = e
            bytesInMemory -= e.bytes
            spilledRecords += 1
        }
        peakMemoryBytes = max(peakMemoryBytes, bytesInMemory)
        // Taken records leave stale heap items: rebuild when they outnumber the live ones.
        if heap.count > 64 && heap.count > 4 * entries.count { rebuildHeap() }
    }

    /// Removes and returns the record waiting under `key`, with its side.
    mutating func take(_ key: String) throws(TraceError) -> (side: Int, record: TraceRecord)? {
        guard let e = entries.removeValue(forKey: key) else { return nil }
        switch e.place {
        case .memory(let r):
            bytesInMemory -= e.bytes
            return (e.side, r)
        case .disk(let offset, let length):
            try spill!.take(at: offset, count: length, into: &scratch)
            return (e.side, RecordSpill.decode(scratch))
        }
    }

    /// Every waiting record's key, side and rows (the records themselves stay where they are).
    var waiting: [(key: String, side: Int, rows: Int)] { entries.map { ($0.key, $0.value.side, $0.value.rows) } }

    private mutating func heapPush(_ p: Int, _ k: String) {
        heap.append((p, k))
        var i = heap.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard heap[parent].priority < heap[i].priority else { break }
            heap.swapAt(parent, i)
            i = parent
        }
    }

    private mutating func heapPop() -> String? {
        guard let top = heap.first else { return nil }
        let last = heap.removeLast()
        if !heap.isEmpty {
            heap[0] = last
            var i = 0
            while true {
                let l = 2 * i + 1, r = l + 1
                var m = i
                if l < heap.count && heap[l].priority > heap[m].priority { m = l }
                if r < heap.count && heap[r].priority > heap[m].priority { m = r }
                if m == i { break }
                heap.swapAt(i, m)
                i = m
            }
        }
        return top.key
    }

    private mutating func rebuildHeap() {
        let live = entries.compactMap { k, e -> (Int, String)? in
            if case .memory = e.place { return (e.priority, k) }
            return nil
        }
        heap = []
        for (p, k) in live { heapPush(p, k) }
    }
}
