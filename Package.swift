// swift-tools-version: 6.1
// One section per target; the library targets hold all logic, the executable is two lines.
import PackageDescription

let package = Package(
    name: "rtrace",
    products: [
        .library(name: "RTrace", targets: ["RTrace"]),
        .executable(name: "rtrace", targets: ["rtrace"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    ],
    targets: [
        // zlib (deflate, and the streaming inflate of npz members) from the system: apt-get install zlib1g-dev.
        .systemLibrary(
            name: "CRTraceZlib",
            pkgConfig: "zlib",
            providers: [.apt(["zlib1g-dev"])]
        ),
        // libdeflate (inflate and CRC-32 of whole buffers, the read path) from the system: apt-get install libdeflate-dev.
        .systemLibrary(
            name: "CRTraceDeflate",
            pkgConfig: "libdeflate",
            providers: [.apt(["libdeflate-dev"])]
        ),

        // SIMD kernels (C: SSSE3/SSE4.1 chosen at run time on x86_64, NEON on aarch64): the id decoder.
        .target(
            name: "CRTraceSIMD"
        ),

        // The .rtrace format: header, chunks, codecs, index, reader, writer, validation; npz/npy (zip, ZIP64) streaming.
        .target(
            name: "RTrace",
            dependencies: [
                "CRTraceZlib",
                "CRTraceDeflate",
                "CRTraceSIMD",
            ]
        ),
        .testTarget(
            name: "RTraceTests",
            dependencies: ["RTrace", "RTraceTestSupport"]
        ),

        // What the test targets share: a seeded RNG, the repository root, temporary paths.
        .target(
            name: "RTraceTestSupport",
            path: "Tests/RTraceTestSupport"
        ),

        // Analyses over traces: diff (flip rates, router KL, policy KL) and stats (expert load).
        .target(
            name: "RTraceAnalysis",
            dependencies: ["RTrace", "CRTraceSpill"]
        ),

        // fallocate's hole punching, for the join's spill file (Sources/RTraceAnalysis/SpillFile.swift).
        .systemLibrary(name: "CRTraceSpill"),

        .testTarget(
            name: "RTraceAnalysisTests",
            dependencies: ["RTraceAnalysis", "RTraceTestSupport"]
        ),

        // The reference MoE RL trainer with routing replay (R2/R3).
        .target(
            name: "RTraceTrain",
            dependencies: ["RTrace"],
            swiftSettings: [
                .unsafeFlags(["-target-cpu", "haswell"], .when(platforms: [.linux], configuration: .release))
            ]
        ),

        .testTarget(
            name: "RTraceTrainTests",
            dependencies: ["RTraceTrain"]
        ),

        // HTML/SVG rendering of diff, stats and replay-train results (rtrace report): values in, text out.
        .target(
            name: "RTraceReport",
            dependencies: ["RTrace", "RTraceAnalysis"]
        ),
        .testTarget(
            name: "RTraceReportTests",
            dependencies: ["RTraceReport", "RTrace", "RTraceAnalysis", "RTraceCLI"]
        ),

        // The subcommands (ParsableCommand types), testable without a process.
        .target(
            name: "RTraceCLI",
            dependencies: [
                "RTrace",
                "RTraceAnalysis",
                "RTraceTrain",
                "RTraceReport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(
            name: "RTraceCLITests",
            dependencies: ["RTraceCLI", "rtrace", "RTraceTestSupport"]
        ),

        // glibc's mallopt, for the executable's allocator settings (Sources/rtrace/main.swift).
        .systemLibrary(name: "CRTraceMalloc"),

        .executableTarget(
            name: "rtrace",
            dependencies: ["RTraceCLI", "CRTraceMalloc"]
        ),
    ]
)
