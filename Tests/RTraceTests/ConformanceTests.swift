import Foundation
import RTraceTestSupport
import Testing
@testable import RTrace

/// One case of spec/conformance/cases.json (made by spec/conformance/make_conformance.py).
struct ConformanceCase: Decodable, Sendable, CustomStringConvertible {
    /// What a read in one mode of spec/format.md §8 gives: records delivered, and the error that stopped it.
    struct Outcome: Decodable, Sendable {
        var records: Int
        var error: String?
        /// The error's offset lies in `[at[0], at[1])`.
        var at: [Int]?
    }
    struct Salvage: Decodable, Sendable {
        var records: Int
        var complete: Bool
        var clean: Bool
    }
    struct Lookup: Decodable, Sendable {
        var uid: String
        var error: String
    }
    var file: String
    var item: String
    var rule: String
    var strict: Outcome
    var incomplete: Outcome?
    var salvage: Salvage?
    var notices: [String]?
    var role: String?
    var lookup: Lookup?
    var policy_version: Int?

    var path: String { "\(repoRoot)/spec/conformance/\(file)" }
    var description: String { file }
}

let conformanceCases: [ConformanceCase] = {
    struct Cases: Decodable { var cases: [ConformanceCase] }
    let url = URL(fileURLWithPath: "\(repoRoot)/spec/conformance/cases.json")
    return (try? JSONDecoder().decode(Cases.self, from: Data(contentsOf: url)).cases) ?? []
}()

/// The conformance files: the Swift reader does what cases.json says for every rule of spec/format.md that
/// two readers could read two ways (python/tests/test_conformance.py holds the Python reader to the same).
@Suite struct ConformanceTests {
    @Test func casesAreThere() {
        #expect(conformanceCases.count >= 50, "spec/conformance/cases.json holds \(conformanceCases.count) cases")
    }

    /// Reads every record as `body` does and compares with the expected outcome.
    func check(_ c: ConformanceCase, _ want: ConformanceCase.Outcome, mode: String, endIsFine: Bool) {
        var delivered = 0
        var error: TraceError? = nil
        do {
            let r = try TraceReader(path: c.path)
            r.threads = 2
            try r.forEachRecord { _ in delivered += 1 }
        } catch let e as TraceError {
            // Incomplete-tolerant reading: the end of the data ends the read without an error.
            if !(endIsFine && e.kind == .truncated) { error = e }
        } catch {
            Issue.record("\(c) \(mode): not a TraceError: \(error)")
        }
        if let kind = want.error {
            let e = error
            #expect(e?.kind.rawValue == kind, "\(c) \(mode): \(String(describing: e)), expected \(kind) — \(c.rule)")
            if let at = want.at, let off = e?.offset {
                #expect(off >= at[0] && off < at[1], "\(c) \(mode): offset \(off) not in \(at): \(String(describing: e))")
            } else {
                #expect(e?.offset != nil, "\(c) \(mode): the error has no offset")
            }
        } else {
            #expect(error == nil, "\(c) \(mode): \(String(describing: error)) — \(c.rule)")
        }
        #expect(delivered == want.records, "\(c) \(mode): \(delivered) records delivered, expected \(want.records)")
    }

    /// What readers accept from a later minor version a 1.0 writer does not write: a policy_version outside
    /// 0…2^53−1 is refused (spec/format.md §3.2).
    @Test func writerKeepsTheHeaderRules() throws {
        for pv in [-1, 1 << 53] {
            let h = TraceHeader(engine: EngineInfo(name: "t", role: .train),
                                model: ModelGeometry(numLayers: 2, numExperts: 4, topK: 2), policyVersion: pv)
            let e = traceError { _ = try TraceWriter(path: tempPath("policy.rtrace"), header: h) }
            #expect(e?.kind == .badHeader && e?.message.contains("policy_version") == true, "\(String(describing: e))")
        }
    }

    @Test(arguments: conformanceCases)
    func strict(_ c: ConformanceCase) throws {
        check(c, c.strict, mode: "strict", endIsFine: false)
        guard c.strict.error == nil || c.lookup != nil || c.notices != nil || c.role != nil else { return }
        let r = try TraceReader(path: c.path)
        if c.notices != nil { _ = try? r.readAll() }  // notices about extension columns come with the chunks
        for n in c.notices ?? [] {
            #expect(r.notices.contains { $0.contains(n) }, "\(c): no notice about \(n) in \(r.notices)")
        }
        if let role = c.role { #expect(r.header.engine.role.rawValue == role) }
        if let p = c.policy_version { #expect(r.header.policyVersion == p) }
        if let lk = c.lookup {
            let e = traceError { _ = try r.record(uid: lk.uid) }
            #expect(e?.kind.rawValue == lk.error, "\(c): lookup of \(lk.uid) gave \(String(describing: e))")
        }
    }

    @Test(arguments: conformanceCases)
    func incompleteTolerant(_ c: ConformanceCase) {
        check(c, c.incomplete ?? c.strict, mode: "incomplete", endIsFine: true)
    }

    @Test(arguments: conformanceCases.filter { $0.salvage != nil })
    func salvage(_ c: ConformanceCase) throws {
        let want = try #require(c.salvage)
        let out = tempPath("conformance-\(c.file)")
        let report = try TraceChecker.check(path: c.path, salvage: out)
        #expect(report.records == want.records, "\(c): salvaged \(report.records), expected \(want.records): \(report.issues)")
        #expect(report.complete == want.complete, "\(c): complete \(report.complete): \(report.issues)")
        #expect(report.clean == want.clean, "\(c): clean \(report.clean): \(report.issues)")
        #expect(try TraceReader(path: out).readAll().count == want.records)
    }
}
