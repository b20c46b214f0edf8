import Dispatch

/// Records of one complete file that start in consecutive chunks, and the chunks that hold them.
///
/// The first chunk may begin with the end of an earlier record, and the last may hold the start of a
/// later one: a reader skips those pieces. So a file cut into runs, each read on its own, reads a
/// chunk that two runs share twice, unless the runs are read one after the other.
public struct RecordRun: Sendable, Equatable {
    /// The chunks to read, as indices into ``TraceIndex/chunks``.
    public var chunks: Range<Int>
    /// The records the run gives, as file ordinals (indices into ``TraceIndex/records``).
    public var records: Range<Int>

    /// Creates a run.
    public init(chunks: Range<Int>, records: Range<Int>) {
        self.chunks = chunks
        self.records = records
    }
}

extension TraceIndex {
    /// The file cut into runs of the records that start in `chunksPerRun` consecutive chunks, in file
    /// order. Chunks where no record starts (inside a long record) belong to the run before them.
    public func recordRuns(chunksPerRun: Int = 1) -> [RecordRun] {
        let per = max(1, chunksPerRun)
        var runs: [RecordRun] = []
        var r = 0
        while r < records.count {
            let group = records[r].firstChunk / per
            let first = r
            var end = records[r].firstChunk + 1
            while r < records.count && records[r].firstChunk / per == group {
                end = max(end, records[r].firstChunk + max(1, records[r].chunkCount))
                r += 1
            }
            runs.append(RecordRun(chunks: records[first].firstChunk..<min(end, chunks.count), records: first..<r))
        }
        return runs
    }
}

/// Reads runs of chunks (``RecordRun``) of complete files through their indexes, in any order and
/// from several files at once: for joins and plans that do not follow file order.
///
/// Chunks are read and decoded a window at a time, the window decoding on all cores while the
/// previous window's records go to the caller, so at most two windows of chunks are in memory.
///
/// ```swift
/// let rs = try paths.map { try TraceReader(path: $0) }
/// let steps = rs[1].index!.recordRuns().reversed().map { (reader: 1, run: $0) }
/// try RecordRunReader(readers: rs).forEachRecord(steps) { step, ordinal, rec in print(step, ordinal, rec.uid) }
/// ```
public final class RecordRunReader {
    /// The files; each must have an index (``TraceReader/index``).
    public let readers: [TraceReader]
    /// Chunks decoded at once (one window).
    public var window: Int

    /// Reads from `readers`, `window` chunks at a time. Throws when a reader has no index.
    public init(readers: [TraceReader], window: Int = 8) throws(TraceError) {
        for r in readers where r.index == nil {
            throw TraceError(.invalidInput, "reading by index needs a complete, seekable file (\(r.incompleteReason ?? "no index"))", file: r.source.name)
        }
        self.readers = readers
        self.window = max(1, window)
    }

    /// A chunk two runs of a file share (the last of one, the first of the next) is decoded once when
    /// the second run comes at most this many steps after the first, in either order: the reader keeps
    /// the first and last chunk of each file's latest run that long.
    public static let reuseDistance = 8

    /// One chunk of a window: where it comes from; `reuse` when it is the first or last chunk of the
    /// previous step of its file (within ``reuseDistance`` steps), decoded once.
    private struct Slot {
        var step: Int, reader: Int, chunk: Int, offset: Int, reuse: Bool, keep: Bool
    }

    /// Chunks decoded by the last ``forEachRecord(_:_:)``: a chunk decoded twice counts twice.
    public private(set) var chunksDecoded = 0

    /// Calls `body(step, ordinal, record)` for every record of every step's run: steps in the order
    /// given, records in file order within a run. `step` indexes `steps`; `ordinal` is the record's
    /// in its file. A chunk two runs of a file share is read and decoded once when the runs come
    /// within ``reuseDistance`` steps.
    ///
    /// Throws at the first damage, naming the file and offset; a run that does not hold the records
    /// the index says it holds is an error too.
    public func forEachRecord(_ steps: [(reader: Int, run: RecordRun)], _ body: (_ step: Int, _ ordinal: Int, _ record: TraceRecord) throws -> Void) throws {
        let decoders = readers.map { ChunkDecoder(header: $0.header) }
        var nextStep = 0, nextChunk = 0
        var inflight: (slots: [Slot], job: MixedDecode)? = nil
        var assembler: RecordAssembler? = nil
        var assembling = -1, emitted = 0
        // Which end chunks of a step the next step of its file reuses (within reuseDistance), known
        // before reading; the reader keeps only those, from one step of a file to its next.
        var reuses = [[Int]](repeating: [], count: steps.count), keeps = reuses
        var previous: [Int: Int] = [:]
        for (i, st) in steps.enumerated() {
            if let p = previous[st.reader], i - p <= RecordRunReader.reuseDistance {
                let pc = steps[p].run.chunks
                for c in Set([pc.lowerBound, pc.upperBound - 1]) where st.run.chunks.contains(c) {
                    reuses[i].append(c); keeps[p].append(c)
                }
            }
            previous[st.reader] = i
        }
        var kept: [Int: [Int: Result<DecodedChunk, TraceError>]] = [:], building = kept
        var deliveredStep: [Int: Int] = [:]
        chunksDecoded = 0

        func endStep() throws {
            guard assembling >= 0 else { return }
            try assembler!.finish(complete: true)
            let want = steps[assembling].run.records.count
            if emitted != want {
                let r = readers[steps[assembling].reader]
                throw TraceError(.corrupt, "index says chunks \(steps[assembling].run.chunks) hold \(want) whole records, they hold \(emitted)", file: r.source.name)
            }
        }
        func deliver(_ slots: [Slot], _ decoded: [Result<DecodedChunk, TraceError>]) throws {
            var di = 0
            for s in slots {
                let r = readers[s.reader]
                if deliveredStep[s.reader] != s.step {
                    // A new step of this file: the previous one's end chunks are what it may reuse;
                    // files whose steps are too far back keep nothing.
                    kept[s.reader] = building[s.reader]
                    building[s.reader] = [:]
                    deliveredStep[s.reader] = s.step
                    for (f, st) in deliveredStep where s.step - st > RecordRunReader.reuseDistance + 1 {
                        kept[f] = nil; building[f] = nil; deliveredStep[f] = nil
                    }
                }
                let res: Result<DecodedChunk, TraceError>
                if s.reuse { res = kept[s.reader]![s.chunk]! } else { res = decoded[di]; di += 1 }
                if s.keep { building[s.reader, default: [:]][s.chunk] = res }
                if s.step != assembling {
                    try endStep()
                    let rs = steps[s.step].run.records
                    assembler = RecordAssembler(header: r.header, file: r.source.name, records: UInt64(rs.lowerBound)..<UInt64(rs.upperBound))
                    assembling = s.step
                    emitted = 0
                }
                switch res {
                case .success(let d):
                    try assembler!.add(d, at: s.offset) { rec in
                        emitted += 1
                        try body(s.step, steps[s.step].run.records.lowerBound + emitted - 1, rec)
                    }
                case .failure(let e):
                    throw e.shifted(by: s.offset).inFile(r.source.name)
                }
            }
        }
        while true {
            var slots: [Slot] = [], frames: [(ChunkDecoder, [UInt8])] = []
            var readError: (any Error)? = nil
            do {
                // A window is `window` chunks to decode; chunks kept from the step before come free.
                while frames.count < window && slots.count < 4 * window && nextStep < steps.count {
                    let (ri, run) = steps[nextStep]
                    guard ri >= 0 && ri < readers.count, let ix = readers[ri].index else {
                        throw TraceError(.invalidInput, "step \(nextStep) names reader \(ri) of \(readers.count)")
                    }
                    let c = run.chunks.lowerBound + nextChunk
                    guard c >= 0 && c < ix.chunks.count else {
                        throw TraceError(.invalidInput, "run \(run.chunks) is outside the file's \(ix.chunks.count) chunks", file: readers[ri].source.name)
                    }
                    let loc = ix.chunks[c]
                    let reuse = reuses[nextStep].contains(c)
                    if !reuse { frames.append((decoders[ri], try readers[ri].source.read(at: loc.offset, count: loc.frameLength))) }
                    slots.append(Slot(step: nextStep, reader: ri, chunk: c, offset: loc.offset, reuse: reuse, keep: keeps[nextStep].contains(c)))
                    nextChunk += 1
                    if nextChunk >= run.chunks.count { nextStep += 1; nextChunk = 0 }
                }
            } catch {
                readError = error
            }
            chunksDecoded += frames.count
            let started = slots.isEmpty ? nil : (slots, MixedDecode.start(frames))
            if let (s, job) = inflight { try deliver(s, job.wait()) }
            inflight = started
            if let readError {
                if let (s, job) = inflight { try deliver(s, job.wait()) }
                throw readError
            }
            if inflight == nil { break }
        }
        try endStep()
    }
}

/// A window of frames, each with its file's decoder, decoding in the background on all cores.
final class MixedDecode: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    private var results: [Result<DecodedChunk, TraceError>] = []

    static func start(_ frames: [(ChunkDecoder, [UInt8])]) -> MixedDecode {
        let job = MixedDecode()
        if frames.isEmpty {
            job.done.signal()
            return job
        }
        let work = frames
        DispatchQueue.global().async {
            let slots = SendableBuffer<Result<DecodedChunk, TraceError>?>(count: work.count, initial: nil)
            defer { slots.free() }
            let run: @Sendable (Int) -> Void = { i in
                do { slots.buffer[i] = .success(try work[i].0.decode(frame: work[i].1)) } catch { slots.buffer[i] = .failure(error as! TraceError) }
            }
            if work.count > 1 {
                DispatchQueue.concurrentPerform(iterations: work.count) { run($0) }
            } else {
                run(0)
            }
            job.results = slots.buffer.map { $0! }
            job.done.signal()
        }
        return job
    }

    /// Waits for the window; one result per frame, in order.
    func wait() -> [Result<DecodedChunk, TraceError>] {
        done.wait()
        done.signal()
        return results
    }
}
