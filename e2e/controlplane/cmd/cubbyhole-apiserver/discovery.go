package main

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
)

// Discovery: /api and /api/v1 are built from the private group's own documents (so they
// always match the installed CRDs), and the private group is hidden from /apis.

func wantsAggregated(r *http.Request) bool {
	return strings.Contains(strings.Join(r.Header.Values("Accept"), ","), "as=APIGroupDiscoveryList")
}

func (s *shim) serveAPI(w http.ResponseWriter, r *http.Request) {
	if wantsAggregated(r) {
		rec := s.subrequest(r, http.MethodGet, "/apis", "", "", nil)
		var doc map[string]interface{}
		if rec.Code == http.StatusOK && json.Unmarshal(rec.Body.Bytes(), &doc) == nil && doc["kind"] == "APIGroupDiscoveryList" {
			var items []interface{}
			if list, _ := doc["items"].([]interface{}); list != nil {
				for _, it := range list {
					if groupName(it) == privGroup {
						m := it.(map[string]interface{})
						m["metadata"] = map[string]interface{}{"creationTimestamp": nil}
						items = append(items, ungroup(m))
					}
				}
			}
			doc["items"] = items
			writeJSON(w, rec.Header().Get("Content-Type"), doc)
			return
		}
	}
	writeJSON(w, "application/json", map[string]interface{}{
		"kind": "APIVersions", "versions": []string{"v1"},
		"serverAddressByClientCIDRs": []map[string]string{{"clientCIDR": "0.0.0.0/0", "serverAddress": r.Host}},
	})
}

func (s *shim) serveAPIv1(w http.ResponseWriter, r *http.Request) {
	r.Header.Set("Accept", "application/json")
	rec := s.subrequest(r, http.MethodGet, privPath, "", "", nil)
	var doc map[string]interface{}
	if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &doc) != nil {
		writeStatus(w, http.StatusServiceUnavailable, "ServiceUnavailable", "core/v1 is not installed yet")
		return
	}
	doc = ungroup(doc).(map[string]interface{})
	doc["groupVersion"] = "v1"
	writeJSON(w, "application/json", doc)
}

func (s *shim) serveAPIs(w http.ResponseWriter, r *http.Request) {
	rec := s.subrequest(r, http.MethodGet, "/apis", "", "", nil)
	var doc map[string]interface{}
	if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &doc) != nil {
		copyRecorder(w, rec)
		return
	}
	key := "groups"
	if doc["kind"] == "APIGroupDiscoveryList" {
		key = "items"
	}
	if list, ok := doc[key].([]interface{}); ok {
		kept := make([]interface{}, 0, len(list))
		for _, it := range list {
			if groupName(it) != privGroup {
				kept = append(kept, it)
			}
		}
		doc[key] = kept
	}
	writeJSON(w, rec.Header().Get("Content-Type"), doc)
}

// groupName reads the name of an APIGroup (legacy) or APIGroupDiscovery (aggregated).
func groupName(it interface{}) string {
	m, _ := it.(map[string]interface{})
	if n, ok := m["name"].(string); ok {
		return n
	}
	md, _ := m["metadata"].(map[string]interface{})
	n, _ := md["name"].(string)
	return n
}

// ungroup replaces every "group": privGroup (responseKind, subresources) with the core group "".
func ungroup(v interface{}) interface{} {
	switch t := v.(type) {
	case map[string]interface{}:
		for k, x := range t {
			if k == "group" && x == privGroup {
				t[k] = ""
			} else {
				t[k] = ungroup(x)
			}
		}
	case []interface{}:
		for i := range t {
			t[i] = ungroup(t[i])
		}
	}
	return v
}

func writeJSON(w http.ResponseWriter, contentType string, doc interface{}) {
	b, err := json.Marshal(doc)
	if err != nil {
		writeStatus(w, http.StatusInternalServerError, "InternalError", err.Error())
		return
	}
	if contentType == "" {
		contentType = "application/json"
	}
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(http.StatusOK)
	w.Write(b)
}

func copyRecorder(w http.ResponseWriter, rec interface {
	Result() *http.Response
}) {
	res := rec.Result()
	for k, v := range res.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(res.StatusCode)
	buf := make([]byte, 32<<10)
	for {
		n, err := res.Body.Read(buf)
		w.Write(buf[:n])
		if err != nil {
			return
		}
	}
}
