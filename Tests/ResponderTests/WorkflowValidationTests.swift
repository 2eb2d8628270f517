import Foundation
import Responder
import SharedTypes
import Testing

@Suite struct WorkflowValidationTests {
    func issues(_ json: String) -> [String] {
        do {
            _ = try WorkflowParser.parse(Data(json.utf8))
            return []
        } catch let error as InvalidWorkflow {
            return error.issues.map(\.description)
        } catch {
            return ["unexpected \(error)"]
        }
    }

    func wrap(_ nodes: String, start: String = "a") -> String {
        #"{"id": "t", "start": "\#(start)", "nodes": [\#(nodes)]}"#
    }

    @Test func theDemoWorkflowIsValid() throws {
        let definition = try WorkflowParser.parse(Data(WorkflowRepository.demoWorkflowJSON))
        #expect(definition.id == WorkflowRepository.defaultWorkflowID)
        #expect(Set(definition.nodes.map(\.kind.typeName)) == Set(WorkflowNode.typeNames))
    }

    @Test func unknownNodeTypesAreRefusedTheOldTriggerAmongThem() {
        let found = issues(wrap(#"{"id": "a", "type": "trigger", "next": "b"}, {"id": "b", "type": "end"}"#))
        #expect(found.contains { $0.contains("node 'a'") && $0.contains("unknown node type 'trigger'") })
    }

    @Test func unknownToolsAndBadToolArgumentsAreRefused() {
        let unknown = issues(wrap(#"{"id": "a", "type": "tool", "tool": "delete_everything", "next": "b"}, {"id": "b", "type": "end"}"#))
        #expect(unknown.contains { $0.contains("unknown tool 'delete_everything'") })
        let badArgument = issues(wrap(#"{"id": "a", "type": "tool", "tool": "set_conversation_status", "arguments": {"status": "closed"}, "next": "b"}, {"id": "b", "type": "end"}"#))
        #expect(badArgument.contains { $0.contains("must be one of open, pending, resolved") })
        let missing = issues(wrap(#"{"id": "a", "type": "tool", "tool": "add_visitor_note", "next": "b"}, {"id": "b", "type": "end"}"#))
        #expect(missing.contains { $0.contains("arguments.note: is required") })
        let extra = issues(wrap(#"{"id": "a", "type": "tool", "tool": "add_tag", "arguments": {"tag": "x", "colour": "red"}, "next": "b"}, {"id": "b", "type": "end"}"#))
        #expect(extra.contains { $0.contains("arguments.colour: is not an argument") })
        let aiTool = issues(wrap(#"{"id": "a", "type": "ai_reply", "tools": ["add_tag", "launch_rocket"], "next": "b"}, {"id": "b", "type": "end"}"#))
        #expect(aiTool.contains { $0.contains("launch_rocket") })
        let ruleNotAllowed = issues(
            wrap(#"{"id": "a", "type": "ai_reply", "tools": [], "rules": [{"keywords": ["x"], "reply": "y", "calls": [{"tool": "add_tag", "arguments": {"tag": "x"}}]}], "next": "b"}, {"id": "b", "type": "end"}"#))
        #expect(ruleNotAllowed.contains { $0.contains("do not allow") })
        // A templated argument is checked when the node runs.
        #expect(issues(wrap(#"{"id": "a", "type": "tool", "tool": "add_tag", "arguments": {"tag": "{{topic}}"}, "next": "b"}, {"id": "b", "type": "end"}"#)).isEmpty)
    }

    @Test func danglingAndMissingNextAreRefused() {
        let dangling = issues(wrap(#"{"id": "a", "type": "message", "text": "hi", "next": "nowhere"}"#))
        #expect(dangling.contains { $0.contains("goes to 'nowhere', which does not exist") })
        let missing = issues(wrap(#"{"id": "a", "type": "message", "text": "hi"}"#))
        #expect(missing.contains { $0.contains("node 'a'") && $0.contains("next") })
        let badStart = issues(wrap(#"{"id": "a", "type": "end"}"#, start: "zz"))
        #expect(badStart.contains { $0.contains("start node 'zz' does not exist") })
    }

    @Test func unreachableNodesAreRefused() {
        let found = issues(wrap(#"{"id": "a", "type": "end"}, {"id": "island", "type": "end"}"#))
        #expect(found.contains { $0.contains("island") && $0.contains("reach") })
    }

    @Test func aCycleThatNeverWaitsForInputIsRefused() {
        let found = issues(
            wrap(
                #"{"id": "a", "type": "message", "text": "1", "next": "b"}, {"id": "b", "type": "condition", "branches": [{"if": {"op": "contains", "value": "x"}, "next": "c"}], "default": "a"}, {"id": "c", "type": "end"}"#
            ))
        #expect(found.contains { $0.contains("loop") || $0.contains("cycle") })
        // The same loop through a wait_for_input is fine.
        #expect(
            issues(
                wrap(#"{"id": "a", "type": "message", "text": "1", "next": "w"}, {"id": "w", "type": "wait_for_input", "next": "a"}"#)
            ).isEmpty)
    }

    @Test func malformedDocumentsGetClearIssues() {
        #expect(issues("not json") == ["not valid JSON"])
        #expect(issues(#"{"id": "Bad Id!", "start": "a", "nodes": [{"id": "a", "type": "end"}]}"#).contains { $0.contains("id must be") })
        #expect(issues(#"{"id": "t", "start": "a", "nodes": []}"#).contains { $0.contains("nodes must be a non-empty array") })
        #expect(issues(wrap(#"{"id": "a", "type": "end"}, {"id": "a", "type": "end"}"#)).contains { $0.contains("used by another node") })
        #expect(issues(wrap(#"{"id": "a", "type": "end", "colour": "red"}"#)).contains { $0.contains("colour") })
        #expect(issues(wrap(#"{"id": "a", "type": "condition", "branches": [{"if": {"op": "matches", "value": "("}, "next": "a"}], "default": "a"}"#)).contains { $0.contains("regular expression") })
    }
}

@Suite struct ToolTests {
    @Test func everyToolHasADefinitionAndTheCatalogueEncodesAsJSONSchema() throws {
        #expect(ToolCatalogue.all.map(\.name) == ToolName.allCases)
        let json = try JSONSerialization.jsonObject(with: JSONEncoder().encode(ToolCatalogue.definition(.setConversationStatus))) as? [String: Any]
        let parameters = try #require(json?["parameters"] as? [String: Any])
        #expect(parameters["type"] as? String == "object")
        #expect(parameters["required"] as? [String] == ["status"])
        #expect(parameters["additionalProperties"] as? Bool == false)
        let status = (parameters["properties"] as? [String: Any])?["status"] as? [String: Any]
        #expect(status?["enum"] as? [String] == ["open", "pending", "resolved"])
    }

    @Test func validCallsSucceedAsTheSystemUser() {
        let calls: [(String, JSONValue)] = [
            ("set_conversation_status", ["status": "pending"]),
            ("add_visitor_note", ["note": "prefers email"]),
            ("update_visitor_profile", ["name": "Ada", "email": "ada@example.com", "phone": "+44 20 7946 0000"]),
            ("add_tag", ["tag": "vip"]),
            ("request_handoff", ["team": "billing", "reason": "refund"]),
        ]
        for (name, arguments) in calls {
            let recorded = ToolExecutor.execute(ToolCall(name: name, arguments: arguments), allowed: nil, nodeId: "n")
            guard case .toolCalled(let call)? = recorded.first else {
                Issue.record("\(name) recorded no ToolCalled")
                continue
            }
            #expect(call.outcome == .succeeded, "\(name): \(call.error ?? "")")
            #expect(call.actorId == SystemActor.actorID)
            #expect(call.tool == name)
        }
        let handoff = ToolExecutor.execute(ToolCall(name: "request_handoff", arguments: ["reason": "angry"]), allowed: nil, nodeId: "n")
        #expect(handoff.last == .handedOff(ConversationHandedOff(nodeId: "n", team: nil, reason: "angry")))
    }

    @Test func invalidCallsAreRecordedAsRejectedWithTheReason() {
        let cases: [(String, JSONValue, String)] = [
            ("set_conversation_status", ["status": "closed"], "must be one of"),
            ("add_visitor_note", [:], "is required"),
            ("add_visitor_note", ["note": 42], "must be a string"),
            ("update_visitor_profile", [:], "needs at least 1"),
            ("update_visitor_profile", ["email": "not-an-email"], "must match"),
            ("add_tag", ["tag": "Has Spaces"], "must match"),
            ("request_handoff", ["team": "x"], "reason: is required"),
            ("drop_tables", [:], "unknown tool"),
            ("add_tag", "vip", "must be an object"),
        ]
        for (name, arguments, reason) in cases {
            let recorded = ToolExecutor.execute(ToolCall(name: name, arguments: arguments), allowed: nil, nodeId: "n")
            #expect(recorded.count == 1, "\(name)")
            guard case .toolCalled(let call)? = recorded.first else { continue }
            #expect(call.outcome == .rejected, "\(name)")
            #expect(call.error?.contains(reason) == true, "\(name): \(call.error ?? "nil")")
            #expect(call.actorId == SystemActor.actorID)
        }
    }

    @Test func theSystemUserIdIsTheDocumentedConstant() {
        #expect(SYSTEM_USER_ID.uuidString.lowercased() == "00000000-0000-4000-8000-000000000001")
        #expect(SystemActor.email == "system@internal.local")
        #expect(UserRole.allCases.map(\.rawValue) == ["admin", "agent", "supervisor", "system"])
    }
}
