import Foundation
import Testing
@testable import RTraceReport

/// The Chromium to render with: $RTRACE_CHROMIUM, else `chromium` or `chromium-browser` on PATH.
let chromiumPath: String? = {
    if let p = ProcessInfo.processInfo.environment["RTRACE_CHROMIUM"], !p.isEmpty { return p }
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
    for dir in path.split(separator: ":") {
        for name in ["chromium", "chromium-browser"] {
            let p = "\(dir)/\(name)"
            if FileManager.default.isExecutableFile(atPath: p) { return p }
        }
    }
    return nil
}()

/// `make test` sets RTRACE_NO_SKIP=1 (RTRACE_REQUIRE_BROWSER=1 does the same for this test alone): a missing
/// browser then fails instead of skipping.
let browserRequired = ["RTRACE_NO_SKIP", "RTRACE_REQUIRE_BROWSER"].contains { ProcessInfo.processInfo.environment[$0] == "1" }

@Suite struct BrowserTests {
    /// Renders the full report of the samples (two traces, --ep, replay-train runs) in headless Chromium and
    /// checks the screenshot: not blank, colourful (plots drawn), content all the way down the page.
    @Test(.enabled(if: chromiumPath != nil || browserRequired, "no chromium (set RTRACE_CHROMIUM, or apt-get install chromium)"),
          .timeLimit(.minutes(2)))
    func reportRendersInHeadlessChromium() throws {
        guard let chromium = chromiumPath else {
            Issue.record("RTRACE_NO_SKIP=1 but no chromium found (make deps installs it with apt-get)")
            return
        }
        let dir = tempDir()
        let runs = [writeRun(dir + "/none-1", steps: 12, k3: 1e-3, flip: 0.03), writeRun(dir + "/r3-1", steps: 12, k3: 1e-5, flip: 0.03)]
        let page = try buildReport(ReportInputs(traces: [sample("rollout"), sample("train_mixed")], runs: runs, ep: 4))
        let html = dir + "/report.html", png = dir + "/shot.png"
        try page.html.write(toFile: html, atomically: true, encoding: .utf8)
        let height = 9000
        let p = Process()
        p.executableURL = URL(fileURLWithPath: chromium)
        p.arguments = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars", "--no-first-run",
                       "--user-data-dir=\(dir)/profile", "--screenshot=\(png)", "--window-size=1400,\(height)", "file://\(html)"]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        #expect(p.terminationStatus == 0, "chromium exited with \(p.terminationStatus)")
        let img = try PNGImage(path: png)
        #expect(img.width == 1400 && img.height == height)
        // Not blank: a good share of non-background pixels and many colours (viridis cells, bars, text).
        var ink = 0
        for y in stride(from: 0, to: img.height, by: 2) { for x in stride(from: 0, to: img.width, by: 2) where !img.isBackground(x, y) { ink += 1 } }
        let inkFrac = Double(ink) / Double((img.width / 2) * (img.height / 2))
        #expect(inkFrac > 0.03, "screenshot is nearly blank: \(inkFrac)")
        #expect(img.distinctColors > 200, "only \(img.distinctColors) colours")
        // The page is long (every section laid out) and every 300-px band down to its end holds something.
        var lastRow = 0
        for y in stride(from: img.height - 1, through: 0, by: -4) {
            if stride(from: 0, to: img.width, by: 4).contains(where: { !img.isBackground($0, y) }) { lastRow = y; break }
        }
        #expect(lastRow > 3000, "content ends at row \(lastRow)")
        var emptyBands: [Int] = []
        let lastBand = lastRow / 300
        for band in 0..<lastBand {
            var n = 0
            for y in stride(from: band * 300, to: band * 300 + 300, by: 3) { for x in stride(from: 0, to: img.width, by: 3) where !img.isBackground(x, y) { n += 1 } }
            if n < 50 { emptyBands.append(band) }
        }
        #expect(emptyBands.isEmpty, "empty bands (300 px) at \(emptyBands)")
        // The viridis extremes are on screen: the heatmaps were painted.
        var sawDark = false
        for i in stride(from: 0, to: img.rgb.count, by: 3) {
            let r = Int(img.rgb[i]), g = Int(img.rgb[i + 1]), b = Int(img.rgb[i + 2])
            if abs(r - 0x44) < 12 && abs(g - 0x01) < 12 && abs(b - 0x54) < 12 { sawDark = true; break }
        }
        #expect(sawDark, "no viridis-dark heatmap cell in the screenshot")
        let ids = figureIDs(page.html)
        for id in ["flip-rate-per-layer", "flip-heatmap", "router-kl", "policy-kl", "divergent-sequences", "policy-by-flipped-layers",
                   "policy-clip-shares", "a-expert-load", "a-imbalance",
                   "a-entropy", "a-ep-imbalance", "a-ep-rank-load", "run-k3", "run-flip-natural", "run-flip-applied", "run-reward"] {
            #expect(ids.contains(id), "missing plot \(id)")
        }
        if let keep = ProcessInfo.processInfo.environment["RTRACE_REPORT_SCREENSHOT"] {
            try? FileManager.default.removeItem(atPath: keep)
            try FileManager.default.copyItem(atPath: png, toPath: keep)
        }
    }
}
