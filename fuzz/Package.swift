// swift-tools-version: 6.1
// The libFuzzer harness over the reader and `check`. A nested package, so the main package's
// `swift build` never needs the fuzzer flags. Build and run it with `make fuzz` (see the Makefile).
import PackageDescription

let package = Package(
    name: "rtrace-fuzz",
    dependencies: [
        .package(name: "rtrace", path: "..")
    ],
    targets: [
        // libFuzzer entry points: LLVMFuzzerTestOneInput runs every read path over one input.
        .executableTarget(
            name: "FuzzReader",
            dependencies: [.product(name: "RTrace", package: "rtrace")]
        )
    ]
)
