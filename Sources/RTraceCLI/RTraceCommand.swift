import ArgumentParser

/// The `rtrace` root command.
public struct RTraceCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "rtrace",
        abstract: "Record, inspect, compare and replay Mixture-of-Experts routing traces.",
        discussion: "Every FILE argument accepts - for standard input, and -o - writes to standard output.",
        subcommands: [Info.self, View.self, Check.self, Import.self, Export.self] + extraSubcommands
    )
    public init() {}
}
