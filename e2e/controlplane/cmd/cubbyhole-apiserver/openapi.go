package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
)

// OpenAPI v3: kubectl checks /openapi/v3 for the "api/v1" group-version before it sends
// fieldValidation (kubectl apply/create). Serve the private group's document there, with
// its paths and GVK extensions mapped back to the core group.

const openapiPriv = "/openapi/v3/apis/" + privGV

func (s *shim) serveOpenAPIIndex(w http.ResponseWriter, r *http.Request) {
	r.Header.Set("Accept", "application/json")
	rec := s.subrequest(r, http.MethodGet, "/openapi/v3", "", "", nil)
	var doc map[string]map[string]interface{}
	if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &doc) != nil || doc["paths"] == nil {
		copyRecorder(w, rec)
		return
	}
	paths := doc["paths"]
	if e, ok := paths["apis/"+privGV].(map[string]interface{}); ok {
		u, _ := e["serverRelativeURL"].(string)
		paths["api/v1"] = map[string]interface{}{"serverRelativeURL": strings.Replace(u, openapiPriv, "/openapi/v3/api/v1", 1)}
		delete(paths, "apis/"+privGV)
	}
	writeJSON(w, "application/json", doc)
}

func (s *shim) serveOpenAPIv1(w http.ResponseWriter, r *http.Request) {
	r.Header.Set("Accept", "application/json")
	rec := s.subrequest(r, http.MethodGet, openapiPriv, "", "", nil)
	if rec.Code != http.StatusOK {
		copyRecorder(w, rec)
		return
	}
	b := rec.Body.Bytes()
	b = bytes.ReplaceAll(b, []byte(`"/apis/`+privGV), []byte(`"/api/v1`))
	b = bytes.ReplaceAll(b, []byte(`"group":"`+privGroup+`"`), []byte(`"group":""`))
	b = bytes.ReplaceAll(b, []byte(`"apiVersion":"`+privGV+`"`), []byte(`"apiVersion":"v1"`))
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(http.StatusOK)
	w.Write(b)
}
