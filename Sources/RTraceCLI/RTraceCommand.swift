import ArgumentParser

/// The `rtrace` root command.
public struct RTraceCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "rtrace",
        abstract: "Record, inspect, compare and replay Mixture-of-Experts routing traces.",
        subcommands: []
    )
    public init() {}
}
