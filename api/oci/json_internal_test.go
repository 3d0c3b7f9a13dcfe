package oci

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

// validJSON reports whether the reader accepts b as one JSON value.
func validJSON(b []byte) ([]byte, bool) {
	r := &jsonReader{b: b}
	raw, err := r.value()
	if err != nil || r.peek() != 0 || r.i != len(b) {
		return nil, false
	}
	return raw, true
}

func TestJSONReader(t *testing.T) {
	for _, s := range []string{
		`0`, `-0`, `1.5e+3`, `-12.0E-1`, `"a\"b\\c\/d\b\f\n\r\t\u00e9\uD83D\uDE00"`, `true`, `false`, `null`,
		`[]`, `{}`, ` [ 1 , "2" , {"a" : [ ] } ] `, `{"":null}`, strings.Repeat("[", 10000) + strings.Repeat("]", 10000),
		`01`, `1.`, `.5`, `1e`, `-`, `+1`, `"\x"`, `"\u12"`, "\"\x01\"", `"abc`, `[1,]`, `{"a":1,}`, `{"a"}`,
		`{a:1}`, `[1 2]`, `nul`, `True`, `1 2`, ``, ` `, `{"a":1}}`, `[`, `]`, `"\`, `"\u"`, `"\uDEAD"`,
		strings.Repeat("[", 10001) + strings.Repeat("]", 10001),
	} {
		_, got := validJSON([]byte(s))
		if want := json.Valid([]byte(s)); got != want {
			t.Errorf("reader says valid=%v for %.40q, encoding/json says %v", got, s, want)
		}
	}
}

func FuzzJSONReader(f *testing.F) {
	for _, s := range []string{
		`{"a":[1,2.5e-3,true,false,null,"x\u00e9\n"],"b":{}}`, `"\uD800"`, `[01]`, `{"a":1,}`, `-0.0E+0`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if !utf8.Valid(b) {
			return // ParseManifest rejects invalid UTF-8 before reading JSON
		}
		raw, ok := validJSON(b)
		if want := json.Valid(b); ok != want {
			t.Fatalf("reader says valid=%v for %q, encoding/json says %v", ok, b, want)
		}
		if !ok {
			return
		}
		// Strings decode exactly as encoding/json decodes them.
		var want string
		if json.Unmarshal(b, &want) == nil {
			got, present, err := jsonString(raw)
			if err != nil || !present || got != want {
				t.Fatalf("jsonString(%q) = %q, %v, %v; encoding/json gives %q", raw, got, present, err, want)
			}
		}
		// Integers too.
		var n int64
		if json.Unmarshal(b, &n) == nil && !strings.ContainsAny(string(raw), ".eE") {
			got, present, err := jsonInt(raw)
			if err != nil || !present || got != n {
				t.Fatalf("jsonInt(%q) = %d, %v, %v; encoding/json gives %d", raw, got, present, err, n)
			}
		}
	})
}

func TestDeepErrorPathIsBounded(t *testing.T) {
	body := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","x":` +
		strings.Repeat("[", 9000) + "1,,2" + strings.Repeat("]", 9000) + "}"
	_, err := ParseManifest("", []byte(body))
	if err == nil || len(err.Error()) > 400 {
		t.Fatalf("error of %d bytes: %.100v", len(err.Error()), err)
	}
	if !strings.Contains(err.Error(), "malformed JSON") {
		t.Errorf("unexpected error %v", err)
	}
	body = strings.Repeat("[", 10001) + strings.Repeat("]", 10001)
	if _, ok := validJSON([]byte(body)); ok {
		t.Error("nesting beyond maxJSONDepth accepted")
	}
}
