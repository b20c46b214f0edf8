import ArgumentParser
import Foundation
import Testing
@testable import RTraceCLI

/// `rtrace report` through the argument parser (no process).
@Suite struct ReportCommandTests {
    func parse(_ args: [String]) throws -> Report {
        try #require(try RTraceCommand.parseAsRoot(["report"] + args) as? Report)
    }

    @Test func writesHTMLAndSVGFiles() throws {
        let d = tempDir()
        try parse([sample("rollout"), sample("train_mixed"), "-o", d + "/r.html", "--buckets", "4"]).run()
        let html = try String(contentsOfFile: d + "/r.html", encoding: .utf8)
        #expect(html.hasPrefix("<!DOCTYPE html>") && figureIDs(html).contains("flip-heatmap"))
        #expect(html.contains("0–25") && html.contains("75–100"))
        try parse([sample("rollout"), "--ep", "2", "--format", "svg", "-o", d + "/svg"]).run()
        let files = try FileManager.default.contentsOfDirectory(atPath: d + "/svg").sorted()
        #expect(files == ["entropy.svg", "ep-imbalance.svg", "ep-rank-load.svg", "expert-load.svg", "imbalance.svg"])
        for f in files { #expect(isWellFormedXML(try String(contentsOfFile: d + "/svg/" + f, encoding: .utf8))) }
    }

    @Test func rejectsBadArguments() {
        #expect(throws: (any Error).self) { try parse(["-o", "x.html"]) }
        #expect(throws: (any Error).self) { try parse(["a", "b", "c", "-o", "x.html"]) }
        #expect(throws: (any Error).self) { try parse(["a", "--ep", "0", "-o", "x.html"]) }
        #expect(throws: (any Error).self) { try parse(["a", "--format", "pdf", "-o", "x.html"]) }
        #expect(throws: (any Error).self) { try parse(["a"]) }
    }

    @Test func badRunDirectoryFailsWithExitCode() throws {
        let d = tempDir()
        #expect(throws: ExitCode.failure) { try parse(["--run", d + "/none", "-o", d + "/r.html"]).run() }
        #expect(!FileManager.default.fileExists(atPath: d + "/r.html"))
    }
}
