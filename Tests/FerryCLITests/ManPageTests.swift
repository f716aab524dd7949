import ArgumentParser
import Foundation
import XCTest
@testable import ferry

/// docs/ferry.1 stays true to the argument parser: every subcommand has its section, and each
/// section lists exactly the options that subcommand's `--help` shows, with the same value
/// names (`.It Fl \-bind Ar ADDR` for `--bind <ADDR>`).
final class ManPageTests: XCTestCase {
    static let manPage = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("docs/ferry.1")

    /// An option as `--help` or the man page names it: `--bind ADDR`, `--json`, `-h`.
    struct Option: Hashable, Comparable, CustomStringConvertible {
        var name: String
        var value: String?
        var description: String { value.map { "\(name) \($0)" } ?? name }
        static func < (a: Option, b: Option) -> Bool { a.description < b.description }
    }

    static let commonOptions: Set<Option> = [Option(name: "-h"), Option(name: "--help"), Option(name: "--version")]

    func testEverySubcommandHasASection() throws {
        let page = try String(contentsOf: Self.manPage, encoding: .utf8)
        let sections = Set(page.split(separator: "\n").compactMap { line -> String? in
            line.hasPrefix(".Ss ferry ") ? String(line.dropFirst(".Ss ferry ".count)) : nil
        })
        let commands = Set(Ferry.configuration.subcommands.map { $0.configuration.commandName ?? "" })
        XCTAssertEqual(sections, commands, "docs/ferry.1 needs one `.Ss ferry NAME` per subcommand")
    }

    func testEachSectionListsExactlyTheOptionsOfItsHelp() throws {
        let page = try String(contentsOf: Self.manPage, encoding: .utf8)
        for command in Ferry.configuration.subcommands {
            let name = try XCTUnwrap(command.configuration.commandName)
            // -h, --help and --version are in every subcommand's help, and under OPTIONS once.
            let help = Self.helpOptions(Ferry.helpMessage(for: command, columns: 1000))
                .subtracting(Self.commonOptions)
            let man = Self.manOptions(page, section: ".Ss ferry \(name)")
            // `forget` takes only its argument; every other subcommand has options.
            XCTAssertEqual(help.isEmpty, name == "forget", "options parsed from `ferry \(name) --help`: \(help.sorted())")
            XCTAssertEqual(man.subtracting(help).sorted(), [], "in docs/ferry.1 but not in `ferry \(name) --help`")
            XCTAssertEqual(help.subtracting(man).sorted(), [], "in `ferry \(name) --help` but not in docs/ferry.1")
        }
    }

    func testTopLevelOptionsMatchTheHelp() throws {
        let page = try String(contentsOf: Self.manPage, encoding: .utf8)
        let help = Self.helpOptions(Ferry.helpMessage(columns: 1000))
        XCTAssertEqual(help, Self.commonOptions)
        XCTAssertEqual(Self.manOptions(page, section: ".Sh OPTIONS"), help)
    }

    func testEveryExitStatusIsDescribed() throws {
        let page = try String(contentsOf: Self.manPage, encoding: .utf8)
        let section = Self.lines(of: page, section: ".Sh EXIT STATUS")
        let described = Set(section.compactMap { $0.hasPrefix(".It ") ? Int32($0.dropFirst(4)) : nil })
        let statuses: Set<Int32> = [Exit.ok, Exit.failed, Exit.network, Exit.refused, Exit.integrity,
                                    Exit.local, Exit.identity, Exit.usage, Interrupt.status, Output.closedOutputStatus]
        XCTAssertEqual(described, statuses)
    }

    /// The page renders without mdoc warnings (skipped where groff is not installed).
    func testPageRendersWithoutWarnings() throws {
        guard let groff = ["/usr/bin/groff", "/bin/groff"].first(where: FileManager.default.isExecutableFile) else {
            throw XCTSkip("groff is not installed")
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: groff)
        process.arguments = ["-mdoc", "-ww", "-z", "-Tutf8", Self.manPage.path]
        let errors = Pipe()
        process.standardError = errors
        try process.run()
        let output = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        XCTAssertEqual(process.terminationStatus, 0)
        XCTAssertEqual(String(decoding: output, as: UTF8.self), "", "groff warnings in docs/ferry.1")
    }

    func testTheParsersSeeWhatTheyShould() {
        let help = """
            OPTIONS:
              --bind <ADDR>           Address to listen on.
                                      --continued help text that starts with a dash
              --no-discovery          Do not answer.
              -h, --help              Show help information.
            """
        XCTAssertEqual(Self.helpOptions(help), [Option(name: "--bind", value: "ADDR"), Option(name: "--no-discovery"),
                                                Option(name: "-h"), Option(name: "--help")])
        let page = ".Sh OPTIONS\n.Bl -tag\n.It Fl \\-to Ar ADDR\ntext\n.It Fl h , Fl \\-help\n.El\n.Sh NEXT\n.It Fl \\-x\n"
        XCTAssertEqual(Self.manOptions(page, section: ".Sh OPTIONS"),
                       [Option(name: "--to", value: "ADDR"), Option(name: "-h"), Option(name: "--help")])
    }

    /// The options in the OPTIONS part of a help text: lines indented by exactly two spaces
    /// that start with `-` (continuation lines are indented further).
    static func helpOptions(_ help: String) -> Set<Option> {
        var options = Set<Option>()
        var inOptions = false
        for line in help.split(separator: "\n", omittingEmptySubsequences: false) {
            if !line.hasPrefix(" ") { inOptions = line.hasPrefix("OPTIONS:"); continue }
            guard inOptions, line.hasPrefix("  -") else { continue }
            // The spec ends where the help text starts: two spaces, or the end of the line.
            let spec = line.dropFirst(2).components(separatedBy: "  ")[0]
            for alias in spec.components(separatedBy: ", ") {
                let words = alias.split(separator: " ")
                let value = words.count > 1 ? String(words[1]).trimmingCharacters(in: CharacterSet(charactersIn: "<>.")) : nil
                options.insert(Option(name: String(words[0]), value: value))
            }
        }
        return options
    }

    /// The options on the `.It` lines of one section (`.Ss`/`.Sh` line `header` up to the next).
    static func manOptions(_ page: String, section header: String) -> Set<Option> {
        var options = Set<Option>()
        for line in lines(of: page, section: header) where line.hasPrefix(".It Fl ") {
            let words = line.replacingOccurrences(of: "\\-", with: "-").split(separator: " ").dropFirst()
            var current: Option?
            var iterator = words.makeIterator()
            while let word = iterator.next() {
                switch word {
                case "Fl":
                    if let current { options.insert(current) }
                    current = iterator.next().map { Option(name: "-" + $0) }
                case "Ar":
                    current?.value = iterator.next().map(String.init)
                default:
                    continue
                }
            }
            if let current { options.insert(current) }
        }
        return options
    }

    static func lines(of page: String, section header: String) -> [String] {
        let all = page.split(separator: "\n").map(String.init)
        guard let start = all.firstIndex(of: header) else { return [] }
        let rest = all[(start + 1)...]
        let end = rest.firstIndex { $0.hasPrefix(".Sh ") || $0.hasPrefix(".Ss ") } ?? all.endIndex
        return Array(all[(start + 1)..<end])
    }
}
