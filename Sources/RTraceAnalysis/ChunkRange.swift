import RTrace

/// A part of a complete trace: the records whose first piece lies in chunks `first` ..< `end` of its
/// index (the rule of Python's `Reader.read_chunks`). Ranges that tile 0 ..< `chunks` count every
/// record of the file once.
public struct ChunkRange: Codable, Equatable, Sendable {
    /// The file, as given.
    public var file: String
    public var first: Int, end: Int
    /// Chunks in the file's index.
    public var chunks: Int

    /// Creates a range.
    public init(file: String, first: Int, end: Int, chunks: Int) {
        self.file = file; self.first = first; self.end = end; self.chunks = chunks
    }

    /// Parses `FIRST:END` (chunk numbers from 0, END excluded) for `file`, whose index has `chunks` chunks.
    public init(parsing text: String, file: String, chunks: Int) throws(TraceError) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, let a = Int(parts[0]), let b = Int(parts[1]) else {
            throw TraceError(.invalidInput, "--chunks takes FIRST:END (chunk numbers, END excluded), got \(text)")
        }
        guard 0 <= a, a < b, b <= chunks else {
            throw TraceError(.invalidInput, "--chunks \(text): the file has chunks 0:\(chunks); give 0 ≤ FIRST < END ≤ \(chunks)", file: file)
        }
        self.init(file: file, first: a, end: b, chunks: chunks)
    }

    /// The part of `index` to read: the records that start in the range, and the chunks that hold them
    /// (a last record may run on into later chunks).
    public func run(in index: TraceIndex) -> RecordRun {
        let recs = index.records
        let r0 = recs.partitioningIndex { $0.firstChunk >= first }
        let r1 = recs.partitioningIndex { $0.firstChunk >= end }
        var last = first + 1
        for r in r0..<r1 { last = max(last, recs[r].firstChunk + max(1, recs[r].chunkCount)) }
        return RecordRun(chunks: first..<min(last, index.chunks.count), records: r0..<r1)
    }

    /// Ranges gathered from partial results: each file's ranges must not overlap, nor come with the whole
    /// file in `files`; a file whose ranges tile all its chunks moves to `files` (appended in the order
    /// that completes them). Throws naming the file and the chunks counted twice.
    static func combine(files: inout [String], ranges: [ChunkRange]) throws(TraceError) -> [ChunkRange] {
        var seen = Set<String>()
        for f in files where !seen.insert(f).inserted {
            throw TraceError(.invalidInput, "counted twice: the results hold the whole file more than once", file: f)
        }
        var byFile: [String: [ChunkRange]] = [:], order: [String] = []
        for r in ranges {
            if byFile[r.file] == nil { order.append(r.file) }
            byFile[r.file, default: []].append(r)
        }
        var left: [ChunkRange] = []
        for f in order {
            let rs = byFile[f]!.sorted { $0.first < $1.first }
            if seen.contains(f) {
                throw TraceError(.invalidInput, "chunks \(rs[0].first):\(rs[0].end) counted twice: the results hold them and the whole file", file: f)
            }
            for (x, y) in zip(rs, rs.dropFirst()) {
                if x.chunks != y.chunks {
                    throw TraceError(.invalidInput, "two results say the file has \(x.chunks) and \(y.chunks) chunks: not the same file", file: f)
                }
                if y.first < x.end {
                    throw TraceError(.invalidInput, "chunks \(y.first):\(min(x.end, y.end)) counted twice (ranges \(x.first):\(x.end) and \(y.first):\(y.end))", file: f)
                }
            }
            let tiles = rs.first!.first == 0 && rs.last!.end == rs.first!.chunks && zip(rs, rs.dropFirst()).allSatisfy { $0.end == $1.first }
            if tiles { files.append(f) } else { left += rs }
        }
        return left
    }
}

extension Array {
    /// The first index whose element satisfies `p`, for `p` false then true along the array.
    func partitioningIndex(where p: (Element) -> Bool) -> Int {
        var lo = 0, hi = count
        while lo < hi {
            let mid = (lo + hi) / 2
            if p(self[mid]) { hi = mid } else { lo = mid + 1 }
        }
        return lo
    }
}
