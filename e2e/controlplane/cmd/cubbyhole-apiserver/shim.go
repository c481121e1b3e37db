package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"

	"k8s.io/apiserver/pkg/endpoints/request"
	"sigs.k8s.io/yaml"
)

// shim is the outermost HTTP handler. It makes the CRD-backed kinds look like the built-in
// ones: /api/v1 paths, apiVersion "v1", JSON only, strategic merge patch, Secret stringData.
type shim struct{ inner http.Handler }

func newShim(inner http.Handler) http.Handler { return &shim{inner: inner} }

// shimmedGroups are real API groups that we serve as CRDs and that need the same care
// (strategic merge patch, protobuf bodies) as the core kinds.
var shimmedGroups = map[string]bool{"coordination.k8s.io": true, "events.k8s.io": true}

const maxBody = 16 << 20

func (s *shim) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	switch {
	case p == "/api" || p == "/api/":
		s.serveAPI(w, r)
	case p == "/api/v1" || p == "/api/v1/":
		s.serveAPIv1(w, r)
	case strings.HasPrefix(p, "/api/v1/"):
		s.serveResource(w, r, privGroup, strings.TrimPrefix(p, "/api/v1/"), true)
	case p == "/openapi/v3" || p == "/openapi/v3/":
		s.serveOpenAPIIndex(w, r)
	case p == "/openapi/v3/api/v1":
		s.serveOpenAPIv1(w, r)
	case p == "/apis" || p == "/apis/":
		s.serveAPIs(w, r)
	case strings.HasPrefix(p, "/apis/"):
		parts := strings.SplitN(strings.TrimPrefix(p, "/apis/"), "/", 3)
		if parts[0] == "apiextensions.k8s.io" { // built in: speaks protobuf
			s.inner.ServeHTTP(w, r)
			return
		}
		if len(parts) == 3 && parts[2] != "" {
			s.serveResource(w, r, parts[0], parts[2], false)
			return
		}
		forceJSON(r)
		s.inner.ServeHTTP(w, r)
	default:
		s.inner.ServeHTTP(w, r)
	}
}

// resourceRef is what the shim needs to know about a resource URL (the server re-parses it).
type resourceRef struct {
	group, resource, name, subresource string
	watch                              bool
}

func parseRef(group, rest string, q map[string][]string) resourceRef {
	segs := strings.Split(strings.Trim(rest, "/"), "/")
	ref := resourceRef{group: group}
	if len(segs) > 0 && segs[0] == "watch" {
		ref.watch = true
		segs = segs[1:]
	}
	if len(segs) >= 3 && segs[0] == "namespaces" && segs[2] != "status" && segs[2] != "finalize" {
		segs = segs[2:]
	}
	if len(segs) > 0 {
		ref.resource = segs[0]
	}
	if len(segs) > 1 {
		ref.name = segs[1]
	}
	if len(segs) > 2 {
		ref.subresource = segs[2]
	}
	if v := q["watch"]; len(v) > 0 && (v[0] == "1" || v[0] == "true") {
		ref.watch = true
	}
	return ref
}

// serveResource handles a resource request. core: the path came in as /api/v1/<rest>.
func (s *shim) serveResource(w http.ResponseWriter, r *http.Request, group, rest string, core bool) {
	ref := parseRef(group, rest, r.URL.Query())
	shimmed := core || shimmedGroups[group]
	if core {
		r.URL.Path = privPath + "/" + rest
		r.URL.RawPath = ""
		r.RequestURI = r.URL.RequestURI()
		r.Header.Del("Accept-Encoding") // we rewrite the response
	}
	forceJSON(r)

	switch r.Method {
	case http.MethodPost, http.MethodPut, http.MethodPatch:
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
		if err != nil {
			writeStatus(w, http.StatusRequestEntityTooLarge, "RequestEntityTooLarge", err.Error())
			return
		}
		ct := r.Header.Get("Content-Type")
		if strings.Contains(ct, "protobuf") {
			if !shimmed {
				writeStatus(w, http.StatusUnsupportedMediaType, "UnsupportedMediaType",
					"cubbyhole-apiserver: protobuf request bodies are only accepted for the built-in kinds; send JSON")
				return
			}
			if body, err = protobufToJSON(body); err != nil {
				writeStatus(w, http.StatusBadRequest, "BadRequest", err.Error())
				return
			}
			ct = "application/json"
			r.Header.Set("Content-Type", ct)
		}
		if shimmed && strings.HasPrefix(ct, "application/strategic-merge-patch+json") && r.Method == http.MethodPatch {
			if t := smpType(ref); t != nil {
				s.strategicMergePatch(s.responseWriter(w, r, core, false), r, ref, body, core)
				return
			}
		}
		if shimmed && strings.HasPrefix(ct, "application/apply-patch+yaml") {
			if j, err := yaml.YAMLToJSON(body); err == nil {
				body = j
			}
		}
		if shimmed && !strings.HasPrefix(ct, "application/json-patch+json") {
			body = rewriteRequestBody(body, ref, core)
		}
		setBody(r, body)
	case http.MethodDelete:
		if shimmed {
			noCascadeFinalizers(r)
		}
	}

	if !core {
		s.inner.ServeHTTP(w, r)
		return
	}
	rw := s.responseWriter(w, r, core, ref.watch)
	s.inner.ServeHTTP(rw, r)
	rw.finish()
}

func setBody(r *http.Request, body []byte) {
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.ContentLength = int64(len(body))
	r.Header.Set("Content-Length", strconv.Itoa(len(body)))
}

// rewriteRequestBody maps apiVersion v1 to the private group (top level only: ownerReferences
// keep saying v1) and folds Secret stringData into data, which CRDs know nothing about.
func rewriteRequestBody(body []byte, ref resourceRef, core bool) []byte {
	m, ok := decodeMap(body)
	if !ok {
		return body
	}
	changed := false
	if core {
		kind, _ := m["kind"].(string)
		if av, _ := m["apiVersion"].(string); av == "v1" && (kind == "" || coreKinds[kind]) {
			m["apiVersion"] = privGV
			changed = true
		}
		if ref.resource == "secrets" && foldStringData(m) {
			changed = true
		}
	}
	if !changed {
		return body
	}
	out, err := json.Marshal(m)
	if err != nil {
		return body
	}
	return out
}

func decodeMap(b []byte) (map[string]interface{}, bool) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var m map[string]interface{}
	if err := d.Decode(&m); err != nil || m == nil {
		return nil, false
	}
	return m, true
}

func foldStringData(m map[string]interface{}) bool {
	raw, present := m["stringData"]
	if !present {
		return false
	}
	delete(m, "stringData")
	sd, _ := raw.(map[string]interface{})
	if len(sd) == 0 {
		return true
	}
	data, _ := m["data"].(map[string]interface{})
	if data == nil {
		data = map[string]interface{}{}
	}
	for k, v := range sd {
		if str, ok := v.(string); ok {
			data[k] = b64(str)
		}
	}
	m["data"] = data
	return true
}

// noCascadeFinalizers: nothing here runs the garbage collector, so Foreground/Orphan deletion
// would leave the object stuck behind a finalizer forever. Downgrade them to Background.
func noCascadeFinalizers(r *http.Request) {
	q := r.URL.Query()
	if pp := q.Get("propagationPolicy"); pp == "Foreground" || pp == "Orphan" {
		q.Set("propagationPolicy", "Background")
		q.Del("orphanDependents")
		r.URL.RawQuery = q.Encode()
		r.RequestURI = r.URL.RequestURI()
	}
	if r.Body == nil || r.ContentLength == 0 {
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody))
	if err != nil {
		setBody(r, nil)
		return
	}
	if m, ok := decodeMap(body); ok {
		if pp, _ := m["propagationPolicy"].(string); pp == "Foreground" || pp == "Orphan" {
			m["propagationPolicy"] = "Background"
		}
		delete(m, "orphanDependents")
		if out, err := json.Marshal(m); err == nil {
			body = out
		}
	}
	setBody(r, body)
}

// forceJSON drops protobuf from Accept: CRDs answer 406 to protobuf-only clients.
func forceJSON(r *http.Request) {
	accept := strings.Join(r.Header.Values("Accept"), ",")
	if !strings.Contains(accept, "protobuf") {
		return
	}
	var keep []string
	for _, a := range strings.Split(accept, ",") {
		if !strings.Contains(a, "protobuf") && strings.TrimSpace(a) != "" {
			keep = append(keep, strings.TrimSpace(a))
		}
	}
	if len(keep) == 0 {
		keep = []string{"application/json"}
	}
	r.Header.Set("Accept", strings.Join(keep, ","))
}

// subrequest runs a request through the full inner chain as the same client.
func (s *shim) subrequest(r *http.Request, method, path, rawQuery, contentType string, body []byte) *httptest.ResponseRecorder {
	sub := r.Clone(r.Context())
	sub.Method = method
	sub.URL.Path, sub.URL.RawPath, sub.URL.RawQuery = path, "", rawQuery
	sub.RequestURI = sub.URL.RequestURI()
	sub.Header.Del("Accept-Encoding")
	sub.Header.Del("If-None-Match")
	sub.Header.Del("Content-Type")
	if body != nil {
		sub.Header.Set("Content-Type", contentType)
		setBody(sub, body)
	} else {
		sub.Body = http.NoBody
		sub.ContentLength = 0
		sub.Header.Del("Content-Length")
	}
	rec := httptest.NewRecorder()
	s.inner.ServeHTTP(rec, sub)
	return rec
}

func writeStatus(w http.ResponseWriter, code int, reason, msg string) {
	b, _ := json.Marshal(map[string]interface{}{
		"kind": "Status", "apiVersion": "v1", "metadata": map[string]interface{}{},
		"status": "Failure", "message": msg, "reason": reason, "code": code,
	})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(code)
	w.Write(b)
}

// clusterScopedNamespaces runs innermost: the request-info parser reads /namespaces/<name>
// as "namespace <name>", which makes the cluster-scoped Namespace CRD answer 404.
func clusterScopedNamespaces(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ri, ok := request.RequestInfoFrom(r.Context()); ok && ri.IsResourceRequest &&
			ri.APIGroup == privGroup && ri.Resource == "namespaces" && ri.Namespace != "" {
			c := *ri
			c.Namespace = ""
			r = r.WithContext(request.WithRequestInfo(r.Context(), &c))
		}
		h.ServeHTTP(w, r)
	})
}
