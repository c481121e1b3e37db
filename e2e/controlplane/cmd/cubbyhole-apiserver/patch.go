package main

import (
	"encoding/json"
	"fmt"
	"net/http"

	jsonpatch "github.com/evanphx/json-patch"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	"k8s.io/client-go/kubernetes/scheme"
)

// smpType returns the k8s.io/api type whose patch metadata drives strategic merge patch.
func smpType(ref resourceRef) interface{} {
	switch ref.group + "/" + ref.resource {
	case privGroup + "/pods":
		return &corev1.Pod{}
	case privGroup + "/secrets":
		return &corev1.Secret{}
	case privGroup + "/namespaces":
		return &corev1.Namespace{}
	case privGroup + "/serviceaccounts":
		return &corev1.ServiceAccount{}
	case privGroup + "/configmaps":
		return &corev1.ConfigMap{}
	case privGroup + "/events":
		return &corev1.Event{}
	case "coordination.k8s.io/leases":
		return &coordinationv1.Lease{}
	case "events.k8s.io/events":
		return &eventsv1.Event{}
	}
	return nil
}

// strategicMergePatch emulates what CRDs refuse (415): GET the object, apply the strategic
// merge patch with the built-in type's patch metadata, then send the difference as a JSON
// merge patch guarded by the resourceVersion we read; retry when someone raced us.
func (s *shim) strategicMergePatch(w outWriter, r *http.Request, ref resourceRef, patch []byte, core bool) {
	defer w.finish()
	pm, ok := decodeMap(patch)
	if !ok {
		writeStatus(w, http.StatusBadRequest, "BadRequest", "strategic merge patch body must be a JSON object")
		return
	}
	delete(pm, "apiVersion")
	delete(pm, "kind")
	if ref.resource == "secrets" {
		foldStringData(pm)
	}
	md, _ := pm["metadata"].(map[string]interface{})
	_, ownRV := md["resourceVersion"]
	patch, _ = json.Marshal(pm)

	var last int
	for attempt := 0; attempt < 20; attempt++ {
		get := s.subrequest(r, http.MethodGet, r.URL.Path, "", "", nil)
		if get.Code != http.StatusOK {
			copyRecorder(w, get)
			return
		}
		cur, ok := decodeMap(get.Body.Bytes())
		if !ok {
			writeStatus(w, http.StatusInternalServerError, "InternalError", "cannot decode current object")
			return
		}
		curMD, _ := cur["metadata"].(map[string]interface{})
		rv, _ := curMD["resourceVersion"].(string)
		delete(cur, "apiVersion")
		delete(cur, "kind")
		orig, _ := json.Marshal(cur)
		patched, err := strategicpatch.StrategicMergePatch(orig, patch, smpType(ref))
		if err != nil {
			writeStatus(w, http.StatusUnprocessableEntity, "Invalid", fmt.Sprintf("strategic merge patch: %v", err))
			return
		}
		merge, err := jsonpatch.CreateMergePatch(orig, patched)
		if err != nil {
			writeStatus(w, http.StatusInternalServerError, "InternalError", fmt.Sprintf("merge patch: %v", err))
			return
		}
		mm, _ := decodeMap(merge)
		if mm == nil {
			mm = map[string]interface{}{}
		}
		mmd, _ := mm["metadata"].(map[string]interface{})
		if mmd == nil {
			mmd = map[string]interface{}{}
			mm["metadata"] = mmd
		}
		if _, set := mmd["resourceVersion"]; !set {
			mmd["resourceVersion"] = rv
		}
		merge, _ = json.Marshal(mm)
		res := s.subrequest(r, http.MethodPatch, r.URL.Path, r.URL.RawQuery, "application/merge-patch+json", merge)
		last = res.Code
		if res.Code == http.StatusConflict && !ownRV {
			continue
		}
		copyRecorder(w, res)
		return
	}
	writeStatus(w, http.StatusConflict, "Conflict", fmt.Sprintf("strategic merge patch: still conflicting after retries (%d)", last))
}

// protobufToJSON transcodes a protobuf body of a built-in type (client-go leader election
// sends Leases as protobuf); a protobuf body to a CRD would otherwise panic the request.
func protobufToJSON(body []byte) ([]byte, error) {
	obj, gvk, err := scheme.Codecs.UniversalDeserializer().Decode(body, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("cannot transcode protobuf body: %v", err)
	}
	obj.GetObjectKind().SetGroupVersionKind(*gvk)
	return json.Marshal(obj)
}
