import Foundation
import RTrace
import RTraceTestSupport
import Testing
@testable import RTraceAnalysis

@Suite("RecordChannel: the bounded queue between a reader thread and diff/stats")
struct RecordChannelTests {
    @Test("delivers every record in file order and never holds more than its capacity, taken ones included")
    func boundedAndOrdered() throws {
        let g = ModelGeometry(numLayers: 3, numExperts: 16, topK: 2)
        let (recs, _) = generatePair(g, sequences: 300, seed: 11, maxRows: 6)
        let path = try write(tempDir() + "/a.rtrace", header(g), recs, chunkBytes: 2048)
        let capacity = 3
        let ch = streamRecords([try TraceReader(path: path)], capacity: capacity)
        var got: [TraceRecord] = []
        while let r = try ch.take() {
            got.append(r)
            #expect(ch.held <= capacity, "after \(got.count) records the queue still holds \(ch.held)")
        }
        let want = try TraceReader(path: path).readAll()
        #expect(got.map(\.uid) == recs.map(\.uid))
        #expect(got == want, "the channel delivered records other than the reader's")
        #expect(ch.held == 0)
    }
}
