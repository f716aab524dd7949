import ArgumentParser
import FerryProtocol

@main
struct Ferry: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ferry",
        abstract: "Sync a directory from another machine on the local network.",
        discussion: """
        One machine serves a directory; others list it, fetch files, or sync a copy that \
        stays exact. Transfers are checksummed, compressed when it helps, and resume where \
        they stopped.

        Examples:
          ferry serve ~/photos --name studio
          ferry discover
          ferry ls studio
          ferry get 192.168.1.20/docs/report.pdf
          ferry sync studio/2024 ~/photos/2024 --delete
        """,
        version: VersionText.line,
        subcommands: [ServeCommand.self, LsCommand.self, GetCommand.self, SyncCommand.self,
                      ManifestCommand.self, DiscoverCommand.self, IdCommand.self, TrustCommand.self, ForgetCommand.self]
    )
}
