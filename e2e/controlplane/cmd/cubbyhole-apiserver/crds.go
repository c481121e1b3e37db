package main

import (
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// privGroup is where the core/v1 kinds really live. The shim maps /api/v1 onto it and hides
// it from /apis; clients never see it.
const (
	privGroup = "core.cubbyhole.internal"
	privGV    = privGroup + "/v1"
	privPath  = "/apis/" + privGV
)

// apiApproved lets us create CRDs in protected *.k8s.io groups (Leases, events.k8s.io).
const apiApproved = "https://github.com/kubernetes/enhancements/pull/1111"

type column struct{ name, typ, path string }

// kindSpec describes one shimmed kind; the schemas keep unknown fields (no core validation).
type kindSpec struct {
	group, kind, plural string
	short, categories   []string
	clusterScoped       bool
	status              bool
	props               map[string]apiextensionsv1.JSONSchemaProps // top-level declared fields
	selectable          []string
	columns             []column
}

func str() apiextensionsv1.JSONSchemaProps { return apiextensionsv1.JSONSchemaProps{Type: "string"} }

func strDefault(v string) apiextensionsv1.JSONSchemaProps {
	s := str()
	s.Default = &apiextensionsv1.JSON{Raw: []byte(`"` + v + `"`)}
	return s
}

// obj is an object that keeps unknown fields and declares a few (for defaults and selectors).
func obj(props map[string]apiextensionsv1.JSONSchemaProps, withDefault bool) apiextensionsv1.JSONSchemaProps {
	t := true
	o := apiextensionsv1.JSONSchemaProps{Type: "object", XPreserveUnknownFields: &t, Properties: props}
	if withDefault {
		o.Default = &apiextensionsv1.JSON{Raw: []byte(`{}`)}
	}
	return o
}

var age = column{"Age", "date", ".metadata.creationTimestamp"}

var kinds = []kindSpec{
	{group: privGroup, kind: "Pod", plural: "pods", short: []string{"po"}, categories: []string{"all"}, status: true,
		props: map[string]apiextensionsv1.JSONSchemaProps{
			"spec":   obj(map[string]apiextensionsv1.JSONSchemaProps{"nodeName": str()}, false),
			"status": obj(map[string]apiextensionsv1.JSONSchemaProps{"phase": strDefault("Pending")}, true),
		},
		selectable: []string{".spec.nodeName", ".status.phase"},
		columns:    []column{{"Status", "string", ".status.phase"}, {"Node", "string", ".spec.nodeName"}, age}},
	{group: privGroup, kind: "Secret", plural: "secrets",
		props:      map[string]apiextensionsv1.JSONSchemaProps{"type": strDefault("Opaque")},
		selectable: []string{".type"},
		columns:    []column{{"Type", "string", ".type"}, age}},
	{group: privGroup, kind: "Namespace", plural: "namespaces", short: []string{"ns"}, clusterScoped: true, status: true,
		props: map[string]apiextensionsv1.JSONSchemaProps{
			"status": obj(map[string]apiextensionsv1.JSONSchemaProps{"phase": strDefault("Active")}, true),
		},
		selectable: []string{".status.phase"},
		columns:    []column{{"Status", "string", ".status.phase"}, age}},
	{group: privGroup, kind: "ServiceAccount", plural: "serviceaccounts", short: []string{"sa"}, columns: []column{age}},
	{group: privGroup, kind: "ConfigMap", plural: "configmaps", short: []string{"cm"}, columns: []column{age}},
	{group: privGroup, kind: "Event", plural: "events", short: []string{"ev"},
		props: map[string]apiextensionsv1.JSONSchemaProps{
			"involvedObject": obj(map[string]apiextensionsv1.JSONSchemaProps{
				"kind": str(), "name": str(), "namespace": str(), "uid": str(), "apiVersion": str(),
			}, false),
			"reason": str(), "type": str(),
		},
		selectable: []string{".involvedObject.kind", ".involvedObject.name", ".involvedObject.namespace",
			".involvedObject.uid", ".involvedObject.apiVersion", ".reason", ".type"},
		columns: []column{{"Type", "string", ".type"}, {"Reason", "string", ".reason"},
			{"Object", "string", ".involvedObject.name"}, {"Message", "string", ".message"}, age}},
	{group: "coordination.k8s.io", kind: "Lease", plural: "leases",
		props: map[string]apiextensionsv1.JSONSchemaProps{
			"spec": obj(map[string]apiextensionsv1.JSONSchemaProps{"holderIdentity": str()}, false),
		},
		columns: []column{{"Holder", "string", ".spec.holderIdentity"}, age}},
	{group: "events.k8s.io", kind: "Event", plural: "events",
		props: map[string]apiextensionsv1.JSONSchemaProps{
			"regarding": obj(map[string]apiextensionsv1.JSONSchemaProps{"kind": str(), "name": str(), "namespace": str(), "uid": str()}, false),
			"reason":    str(), "type": str(),
		},
		selectable: []string{".regarding.kind", ".regarding.name", ".regarding.namespace", ".regarding.uid", ".reason", ".type"},
		columns: []column{{"Type", "string", ".type"}, {"Reason", "string", ".reason"},
			{"Object", "string", ".regarding.name"}, {"Note", "string", ".note"}, age}},
}

func (k kindSpec) crd() *apiextensionsv1.CustomResourceDefinition {
	t := true
	root := apiextensionsv1.JSONSchemaProps{Type: "object", XPreserveUnknownFields: &t, Properties: k.props}
	scope := apiextensionsv1.NamespaceScoped
	if k.clusterScoped {
		scope = apiextensionsv1.ClusterScoped
	}
	v := apiextensionsv1.CustomResourceDefinitionVersion{
		Name: "v1", Served: true, Storage: true,
		Schema: &apiextensionsv1.CustomResourceValidation{OpenAPIV3Schema: &root},
	}
	if k.status {
		v.Subresources = &apiextensionsv1.CustomResourceSubresources{Status: &apiextensionsv1.CustomResourceSubresourceStatus{}}
	}
	for _, f := range k.selectable {
		v.SelectableFields = append(v.SelectableFields, apiextensionsv1.SelectableField{JSONPath: f})
	}
	for _, c := range k.columns {
		v.AdditionalPrinterColumns = append(v.AdditionalPrinterColumns,
			apiextensionsv1.CustomResourceColumnDefinition{Name: c.name, Type: c.typ, JSONPath: c.path})
	}
	lower := map[string]string{"Pod": "pod", "Secret": "secret", "Namespace": "namespace", "ServiceAccount": "serviceaccount",
		"ConfigMap": "configmap", "Event": "event", "Lease": "lease"}[k.kind]
	return &apiextensionsv1.CustomResourceDefinition{
		ObjectMeta: metav1.ObjectMeta{
			Name:        k.plural + "." + k.group,
			Annotations: map[string]string{"api-approved.kubernetes.io": apiApproved},
		},
		Spec: apiextensionsv1.CustomResourceDefinitionSpec{
			Group: k.group,
			Names: apiextensionsv1.CustomResourceDefinitionNames{
				Plural: k.plural, Singular: lower, Kind: k.kind, ListKind: k.kind + "List",
				ShortNames: k.short, Categories: k.categories,
			},
			Scope:    scope,
			Versions: []apiextensionsv1.CustomResourceDefinitionVersion{v},
		},
	}
}

// coreKinds are the kinds whose top-level apiVersion the shim rewrites between v1 and privGV.
var coreKinds = map[string]bool{}

func init() {
	for _, k := range kinds {
		if k.group == privGroup {
			coreKinds[k.kind] = true
			coreKinds[k.kind+"List"] = true
		}
	}
}
