package fakeopenai

import (
	"slices"
	"strings"
	"testing"
)

const weatherTool = `{"type":"function","name":"weather","description":"d","strict":true,"parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"],"additionalProperties":false}}`

func TestResponsesFunctionCallStream(t *testing.T) {
	s := newTestServer(t, Options{})
	s.ScriptResponse(ResponseScript{FunctionCalls: []FunctionCall{
		{Name: "weather", Arguments: `{"city":"Paris"}`, CallID: "call_1"},
		{Name: "undeclared", Arguments: `{}`},
		{Name: "weather", Arguments: `{"city":"Rome"}`},
	}})
	frames := streamAll(t, s, `{"model":"m","input":"x","stream":true,"tools":[`+weatherTool+`]}`)
	call := []string{"response.output_item.added", "response.function_call_arguments.delta", "response.function_call_arguments.delta",
		"response.function_call_arguments.delta", "response.function_call_arguments.delta", "response.function_call_arguments.done", "response.output_item.done"}
	want := slices.Concat([]string{"response.created", "response.in_progress"}, call, call, []string{"response.completed"})
	if got := eventNames(frames); !slices.Equal(got, want) {
		t.Fatalf("events %v\nwant %v", got, want)
	}
	added := obj(t, frames[2].data["item"], "item")
	if added["type"] != "function_call" || added["status"] != "in_progress" || added["arguments"] != "" ||
		added["call_id"] != "call_1" || added["name"] != "weather" || !strings.HasPrefix(added["id"].(string), "fc_") {
		t.Fatalf("added item %v", added)
	}
	var args strings.Builder
	for _, f := range frames[3:7] {
		if f.data["item_id"] != added["id"] || f.data["output_index"] != float64(0) {
			t.Fatalf("delta %v", f.data)
		}
		args.WriteString(f.data["delta"].(string))
	}
	if args.String() != `{"city":"Paris"}` || frames[7].data["arguments"] != `{"city":"Paris"}` || frames[7].data["name"] != "weather" {
		t.Fatalf("arguments %q, done %v", args.String(), frames[7].data)
	}
	second := obj(t, frames[9].data["item"], "item")
	if second["arguments"] != "" || frames[9].data["output_index"] != float64(1) || !strings.HasPrefix(second["call_id"].(string), "call_") {
		t.Fatalf("second call added %v", frames[9].data)
	}
	resp := obj(t, frames[len(frames)-1].data["response"], "response")
	output, _ := resp["output"].([]any)
	if len(output) != 2 || obj(t, output[0], "output[0]")["status"] != "completed" || obj(t, output[1], "output[1]")["arguments"] != `{"city":"Rome"}` {
		t.Fatalf("completed output %v", output)
	}

	// parallel_tool_calls false: one call at most.
	s.ScriptResponse(ResponseScript{FunctionCalls: []FunctionCall{{Name: "weather", Arguments: `{}`}, {Name: "weather", Arguments: `{}`}}})
	frames = streamAll(t, s, `{"model":"m","input":"x","stream":true,"parallel_tool_calls":false,"tools":[`+weatherTool+`]}`)
	if output, _ := obj(t, frames[len(frames)-1].data["response"], "response")["output"].([]any); len(output) != 1 {
		t.Fatalf("parallel_tool_calls false: output %v", output)
	}

	// tool_choice none: the model cannot call, it answers.
	s.ScriptResponse(ResponseScript{Text: "ok", FunctionCalls: []FunctionCall{{Name: "weather", Arguments: `{"city":"x"}`}}})
	frames = streamAll(t, s, `{"model":"m","input":"x","stream":true,"tool_choice":"none","tools":[`+weatherTool+`]}`)
	if got := eventNames(frames); !slices.Equal(got, append(textEvents(1), doneEvents("response.completed")...)) {
		t.Fatalf("with tool_choice none: %v", got)
	}
}

func TestResponsesFunctionToolAndCallValidation(t *testing.T) {
	s := newTestServer(t, Options{})
	call := `{"type":"function_call","call_id":"call_1","name":"weather","arguments":"{}"}`
	output := `{"type":"function_call_output","call_id":"call_1","output":"sunny"}`
	for _, tc := range []struct{ name, body, param, code, message string }{
		{"open schema", `{"model":"m","input":"x","tools":[{"type":"function","name":"f","strict":true,"parameters":{"type":"object","properties":{"a":{"type":"string"}},"required":["a"]}}]}`,
			"tools[0].parameters", "invalid_function_parameters", "Invalid schema for function 'f': In context=(), 'additionalProperties' is required to be supplied and to be false."},
		{"not every property required", `{"model":"m","input":"x","tools":[{"type":"function","name":"f","strict":true,"parameters":{"type":"object","properties":{"a":{"type":"string"},"b":{"type":"string"}},"required":["a"],"additionalProperties":false}}]}`,
			"tools[0].parameters", "invalid_function_parameters", "Invalid schema for function 'f': In context=(), 'required' is required to be supplied and to be an array including every key in properties. Missing 'b'."},
		{"bad name", `{"model":"m","input":"x","tools":[{"type":"function","name":"a.b"}]}`,
			"tools[0].name", "invalid_value", "Invalid 'tools[0].name': string does not match pattern. Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'."},
		{"output without call", `{"model":"m","input":[` + output + `]}`,
			"input", "", "No tool call found for function call output with call_id call_1."},
		{"call without output", `{"model":"m","input":[` + call + `]}`,
			"input", "", "No tool output found for function call call_1."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := postJSON(t, s, tc.body)
			e := obj(t, r.json(t)["error"], "error")
			if r.status != 400 || e["param"] != tc.param || e["message"] != tc.message || (tc.code != "" && e["code"] != tc.code) || (tc.code == "" && e["code"] != nil) {
				t.Fatalf("status %d error %v", r.status, e)
			}
		})
	}
	// Non-strict schemas are the model's business; a paired call is fine.
	for _, body := range []string{
		`{"model":"m","input":"x","tools":[{"type":"function","name":"f","parameters":{"type":"object","properties":{"a":{"type":"string"}}}}]}`,
		`{"model":"m","input":[{"role":"user","content":"hi"},` + call + `,` + output + `],"tools":[` + weatherTool + `]}`,
	} {
		if r := postJSON(t, s, body); r.status != 200 {
			t.Fatalf("%s: status %d %s", body, r.status, r.body)
		}
	}
}

func TestResponsesReasoningItemsWithoutStore(t *testing.T) {
	s := newTestServer(t, Options{})
	s.ScriptResponse(ResponseScript{Reasoning: true, FunctionCalls: []FunctionCall{{Name: "weather", Arguments: `{"city":"x"}`, CallID: "call_1"}}})
	frames := streamAll(t, s, `{"model":"m","input":"x","stream":true,"store":false,"include":["reasoning.encrypted_content"],"tools":[`+weatherTool+`]}`)
	if got := eventNames(frames)[2:4]; !slices.Equal(got, []string{"response.output_item.added", "response.output_item.done"}) {
		t.Fatalf("events %v", eventNames(frames))
	}
	rs := obj(t, frames[3].data["item"], "item")
	fc := obj(t, frames[len(frames)-2].data["item"], "item")
	if rs["type"] != "reasoning" || rs["encrypted_content"] == nil || frames[4].data["output_index"] != float64(1) {
		t.Fatalf("reasoning %v, first call event %v", rs, frames[4].data)
	}
	rsJSON := `{"type":"reasoning","id":"` + rs["id"].(string) + `","summary":[],"encrypted_content":"` + rs["encrypted_content"].(string) + `"}`
	fcJSON := `{"type":"function_call","id":"` + fc["id"].(string) + `","call_id":"call_1","name":"weather","arguments":"{}"}`
	out := `{"type":"function_call_output","call_id":"call_1","output":"ok"}`
	for _, tc := range []struct{ input, message string }{
		{fcJSON + "," + out, "Item '" + fc["id"].(string) + "' of type 'function_call' was provided without its required 'reasoning' item: '" + rs["id"].(string) + "'."},
		{`{"type":"reasoning","id":"` + rs["id"].(string) + `","summary":[]},` + fcJSON + "," + out,
			"Item with id '" + rs["id"].(string) + "' not found. Items are not persisted when `store` is set to false. Try again with `store` set to true, or remove this item from your input."},
	} {
		r := postJSON(t, s, `{"model":"m","store":false,"input":[`+tc.input+`]}`)
		if e := obj(t, r.json(t)["error"], "error"); r.status != 400 || e["message"] != tc.message || e["param"] != "input" {
			t.Fatalf("status %d error %v", r.status, e)
		}
	}
	for _, input := range []string{rsJSON + "," + fcJSON + "," + out, `{"type":"function_call","call_id":"call_1","name":"weather","arguments":"{}"},` + out} {
		if r := postJSON(t, s, `{"model":"m","store":false,"input":[`+input+`]}`); r.status != 200 {
			t.Fatalf("%s: status %d %s", input, r.status, r.body)
		}
	}
}
