package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strconv"
)

// outWriter is an http.ResponseWriter that may hold output back until finish.
type outWriter interface {
	http.ResponseWriter
	finish()
}

func (s *shim) responseWriter(w http.ResponseWriter, r *http.Request, core, watch bool) outWriter {
	if !core {
		return passthrough{w}
	}
	if watch {
		return &watchWriter{w: w}
	}
	return &bufferWriter{w: w, header: http.Header{}}
}

type passthrough struct{ http.ResponseWriter }

func (passthrough) finish() {}

// bufferWriter rewrites a complete (non-streaming) response.
type bufferWriter struct {
	w      http.ResponseWriter
	header http.Header
	code   int
	buf    bytes.Buffer
}

func (b *bufferWriter) Header() http.Header { return b.header }
func (b *bufferWriter) WriteHeader(code int) {
	if b.code == 0 {
		b.code = code
	}
}
func (b *bufferWriter) Write(p []byte) (int, error) {
	if b.code == 0 {
		b.code = http.StatusOK
	}
	return b.buf.Write(p)
}
func (b *bufferWriter) Flush()                  {}
func (b *bufferWriter) CloseNotify() <-chan bool { return closeNotify(b.w) }
func (b *bufferWriter) finish() {
	if b.code == 0 {
		b.code = http.StatusOK
	}
	out := b.buf.Bytes()
	if len(out) > 0 && isJSON(b.header.Get("Content-Type")) {
		out = rewriteResponse(out)
	}
	h := b.w.Header()
	for k, v := range b.header {
		h[k] = v
	}
	if len(out) > 0 || b.header.Get("Content-Length") != "" {
		h.Set("Content-Length", strconv.Itoa(len(out)))
	}
	b.w.WriteHeader(b.code)
	b.w.Write(out)
}

func isJSON(ct string) bool { return ct == "" || bytes.Contains([]byte(ct), []byte("json")) }

// watchWriter rewrites a watch stream one event (one line) at a time and flushes each.
type watchWriter struct {
	w       http.ResponseWriter
	pending []byte
	started bool
}

func (ww *watchWriter) Header() http.Header { return ww.w.Header() }
func (ww *watchWriter) WriteHeader(code int) {
	if !ww.started {
		ww.started = true
		ww.w.Header().Del("Content-Length")
		ww.w.WriteHeader(code)
	}
}
func (ww *watchWriter) Write(p []byte) (int, error) {
	ww.WriteHeader(http.StatusOK)
	ww.pending = append(ww.pending, p...)
	for {
		i := bytes.IndexByte(ww.pending, '\n')
		if i < 0 {
			break
		}
		line := ww.pending[:i]
		out := rewriteResponse(line)
		out = append(out, '\n')
		if _, err := ww.w.Write(out); err != nil {
			return 0, err
		}
		ww.pending = ww.pending[i+1:]
	}
	if len(ww.pending) == 0 {
		ww.pending = nil
	}
	return len(p), nil
}
func (ww *watchWriter) Flush() {
	if f, ok := ww.w.(http.Flusher); ok {
		f.Flush()
	}
}
func (ww *watchWriter) Unwrap() http.ResponseWriter { return ww.w }
func (ww *watchWriter) CloseNotify() <-chan bool  { return closeNotify(ww.w) }

// closeNotify: the apiserver's writer wrappers only offer Flush to watches when the writer
// they wrap is also a CloseNotifier.
func closeNotify(w http.ResponseWriter) <-chan bool {
	//nolint:staticcheck // required by k8s.io/apiserver/pkg/endpoints/responsewriter
	if cn, ok := w.(http.CloseNotifier); ok {
		return cn.CloseNotify()
	}
	return make(chan bool)
}
func (ww *watchWriter) finish() {
	if len(ww.pending) > 0 {
		ww.w.Write(rewriteResponse(ww.pending))
		ww.pending = nil
	}
	ww.Flush()
}

var (
	privGVJSON     = []byte(`"` + privGV + `"`)
	v1JSON         = json.RawMessage(`"v1"`)
	groupQualifier = []byte("." + privGroup)
)

// rewriteResponse turns privGV into v1 at the top level of an object, of list items, of Table
// rows and of watch event objects; nested fields (ownerReferences) stay untouched.
func rewriteResponse(doc []byte) []byte {
	if !bytes.Contains(doc, []byte(privGroup)) {
		return doc
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(doc, &m); err != nil {
		return doc
	}
	if !fixTop(m) {
		return doc
	}
	out, err := json.Marshal(m)
	if err != nil {
		return doc
	}
	return out
}

func fixTop(m map[string]json.RawMessage) bool {
	changed := false
	if bytes.Equal(bytes.TrimSpace(m["apiVersion"]), privGVJSON) {
		m["apiVersion"] = v1JSON
		changed = true
	}
	var kind string
	json.Unmarshal(m["kind"], &kind)
	switch {
	case kind == "Status":
		if v := m["message"]; bytes.Contains(v, groupQualifier) {
			m["message"] = bytes.ReplaceAll(v, groupQualifier, nil)
			changed = true
		}
		var details map[string]interface{}
		if json.Unmarshal(m["details"], &details) == nil && details["group"] == privGroup {
			details["group"] = ""
			if b, err := json.Marshal(details); err == nil {
				m["details"] = b
				changed = true
			}
		}
	case kind == "Table":
		changed = fixArray(m, "rows", "object") || changed
	case m["items"] != nil:
		changed = fixArray(m, "items", "") || changed
	case kind == "" && m["type"] != nil && m["object"] != nil: // watch event
		var obj map[string]json.RawMessage
		if json.Unmarshal(m["object"], &obj) == nil && fixTop(obj) {
			if b, err := json.Marshal(obj); err == nil {
				m["object"] = b
				changed = true
			}
		}
	}
	return changed
}

// fixArray fixes each element of m[key] (or element[sub] when sub is set).
func fixArray(m map[string]json.RawMessage, key, sub string) bool {
	var arr []map[string]json.RawMessage
	if json.Unmarshal(m[key], &arr) != nil {
		return false
	}
	changed := false
	for _, el := range arr {
		if sub == "" {
			changed = fixTop(el) || changed
			continue
		}
		var obj map[string]json.RawMessage
		if json.Unmarshal(el[sub], &obj) == nil && obj != nil && fixTop(obj) {
			if b, err := json.Marshal(obj); err == nil {
				el[sub] = b
				changed = true
			}
		}
	}
	if changed {
		if b, err := json.Marshal(arr); err == nil {
			m[key] = b
		}
	}
	return changed
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
