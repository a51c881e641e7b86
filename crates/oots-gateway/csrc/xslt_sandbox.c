/*
 * XSLT 1.0 for the preview space: libxslt run in a sandbox, for evidence a national
 * register sends with a stylesheet to make it readable.
 *
 * What a stylesheet or document cannot do here:
 * - load anything: every load (xsl:import, xsl:include, document()) goes to a loader that
 *   opens nothing (imports fail, document() is an empty document), and libxslt's security
 *   preferences forbid writing files, directories and to the network;
 * - use a DTD: documents and stylesheets with a DOCTYPE are refused (no entities, internal
 *   or external), and the parser never touches the network (XML_PARSE_NONET);
 * - run unbounded: a limit on template depth, on variables and on XSLT operations, and the
 *   whole transformation runs in a forked child with a memory limit that is killed at a
 *   wall-clock deadline;
 * - put active content in the result: script, meta, base, link, frames and plugin
 *   elements are removed, and so are event-handler attributes and URL attributes other
 *   than same-page fragments and data:image/ (the page also serves it sandboxed under a
 *   CSP that allows no script and no fetch).
 */
#define _GNU_SOURCE /* strcasestr */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxslt/documents.h>
#include <libxslt/security.h>
#include <libxslt/transform.h>
#include <libxslt/xslt.h>
#include <libxslt/xsltInternals.h>
#include <libxslt/xsltutils.h>

/* The only way libxslt reads a document: xsl:import and xsl:include are refused (the
   stylesheet fails), document() gets an empty document (so a stylesheet that asks still
   renders, without whatever it asked for). Nothing is ever opened or fetched. */
static xmlDocPtr refuse_load(const xmlChar *uri, xmlDictPtr dict, int options, void *ctxt,
                             xsltLoadType type) {
    (void)uri; (void)dict; (void)options; (void)ctxt;
    if (type == XSLT_LOAD_DOCUMENT) return xmlNewDoc((const xmlChar *)"1.0");
    return NULL;
}

/* The first error libxslt or libxml2 reports, kept for the caller. */
static char first_error[512];

static void keep_error(void *ctx, const char *msg, ...) {
    (void)ctx;
    if (first_error[0] != '\0') return;
    va_list ap;
    va_start(ap, msg);
    vsnprintf(first_error, sizeof first_error, msg, ap);
    va_end(ap);
    size_t n = strlen(first_error);
    while (n > 0 && (first_error[n - 1] == '\n' || first_error[n - 1] == ' ')) first_error[--n] = '\0';
}

static xmlDocPtr parse(const char *bytes, size_t len, const char *what, char *err, size_t err_len) {
    int opts = XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING;
    xmlDocPtr doc = xmlReadMemory(bytes, (int)len, NULL, NULL, opts);
    if (doc == NULL) {
        snprintf(err, err_len, "the %s is not well-formed XML%s%s", what,
                 first_error[0] ? ": " : "", first_error);
        return NULL;
    }
    if (doc->intSubset != NULL || doc->extSubset != NULL) {
        xmlFreeDoc(doc);
        snprintf(err, err_len, "the %s has a DOCTYPE; DTDs and entities are refused", what);
        return NULL;
    }
    return doc;
}

static int is_one_of(const xmlChar *name, const char *const *list) {
    for (; *list != NULL; list++)
        if (strcasecmp((const char *)name, *list) == 0) return 1;
    return 0;
}

static const char *const DROPPED_ELEMENTS[] = {
    "script", "meta", "base", "link", "iframe", "frame", "frameset", "object", "embed",
    "applet", "portal", "noscript", NULL};
static const char *const URL_ATTRIBUTES[] = {
    "href", "src", "action", "formaction", "srcset", "background", "poster", "data",
    "ping", "lowsrc", "dynsrc", "longdesc", "cite", "codebase", "manifest", "icon", NULL};

static void sanitize(xmlNodePtr node) {
    while (node != NULL) {
        xmlNodePtr next = node->next;
        if (node->type == XML_ELEMENT_NODE) {
            if (is_one_of(node->name, DROPPED_ELEMENTS)) {
                xmlUnlinkNode(node);
                xmlFreeNode(node);
                node = next;
                continue;
            }
            xmlAttrPtr attr = node->properties;
            while (attr != NULL) {
                xmlAttrPtr next_attr = attr->next;
                int drop = strncasecmp((const char *)attr->name, "on", 2) == 0;
                if (!drop && is_one_of(attr->name, URL_ATTRIBUTES)) {
                    xmlChar *v = xmlNodeGetContent((xmlNodePtr)attr);
                    const char *s = v ? (const char *)v : "";
                    while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r') s++;
                    drop = !(s[0] == '#' || strncasecmp(s, "data:image/", 11) == 0);
                    xmlFree(v);
                }
                if (!drop && strcasecmp((const char *)attr->name, "style") == 0) {
                    /* url() in inline styles could fetch; the CSP blocks it too. */
                    xmlChar *v = xmlNodeGetContent((xmlNodePtr)attr);
                    drop = v != NULL && strcasestr((const char *)v, "url(") != NULL;
                    xmlFree(v);
                }
                if (drop) xmlRemoveProp(attr);
                attr = next_attr;
            }
            sanitize(node->children);
        } else if (node->type == XML_PI_NODE) {
            xmlUnlinkNode(node);
            xmlFreeNode(node);
        }
        node = next;
    }
}

/* Runs the transformation in this process. 0 and *out (malloc'd) on success. */
static int transform_here(const char *xml, size_t xml_len, const char *xsl, size_t xsl_len,
                          unsigned long op_limit, int max_depth, char **out, int *out_len,
                          char *err, size_t err_len) {
    first_error[0] = '\0';
    xmlSetGenericErrorFunc(NULL, keep_error);
    xsltSetGenericErrorFunc(NULL, keep_error);
    xsltSetLoaderFunc(refuse_load);

    xmlDocPtr style_doc = parse(xsl, xsl_len, "stylesheet", err, err_len);
    if (style_doc == NULL) return 1;
    xsltStylesheetPtr style = xsltParseStylesheetDoc(style_doc);
    if (style == NULL || style->errors != 0) {
        snprintf(err, err_len, "the stylesheet is not usable XSLT 1.0%s%s",
                 first_error[0] ? ": " : "", first_error);
        if (style != NULL) xsltFreeStylesheet(style); else xmlFreeDoc(style_doc);
        return 1;
    }
    xmlDocPtr doc = parse(xml, xml_len, "evidence", err, err_len);
    if (doc == NULL) {
        xsltFreeStylesheet(style);
        return 1;
    }
    xsltTransformContextPtr ctxt = xsltNewTransformContext(style, doc);
    xsltSecurityPrefsPtr sec = xsltNewSecurityPrefs();
    if (ctxt == NULL || sec == NULL) {
        snprintf(err, err_len, "out of memory");
        return 1;
    }
    /* Reads go through refuse_load only (forbidding them here would turn document() into
       an error that discards the whole result); writes (xsl:document, exsl:document) are
       forbidden. */
    xsltSetSecurityPrefs(sec, XSLT_SECPREF_WRITE_FILE, xsltSecurityForbid);
    xsltSetSecurityPrefs(sec, XSLT_SECPREF_CREATE_DIRECTORY, xsltSecurityForbid);
    xsltSetSecurityPrefs(sec, XSLT_SECPREF_WRITE_NETWORK, xsltSecurityForbid);
    xsltSetCtxtSecurityPrefs(sec, ctxt);
    ctxt->maxTemplateDepth = max_depth;
    ctxt->maxTemplateVars = max_depth * 10;
    ctxt->opLimit = op_limit;
    xmlDocPtr result = xsltApplyStylesheetUser(style, doc, NULL, NULL, NULL, ctxt);
    /* A refused load (document()) is an error the result survives, as an empty node-set;
       a limit or xsl:message terminate stops the transformation and leaves no result. */
    int stopped = ctxt->state == XSLT_STATE_STOPPED;
    int rc = 1;
    if (result == NULL || stopped) {
        snprintf(err, err_len, "the transformation failed%s%s", first_error[0] ? ": " : "",
                 first_error[0] ? first_error : " (a limit was reached or the stylesheet stopped)");
    } else {
        sanitize(result->children);
        xmlChar *buf = NULL;
        int len = 0;
        if (xsltSaveResultToString(&buf, &len, result, style) == 0 && buf != NULL) {
            *out = (char *)buf;
            *out_len = len;
            rc = 0;
        } else {
            snprintf(err, err_len, "the result cannot be serialized");
        }
    }
    if (result != NULL) xmlFreeDoc(result);
    xsltFreeTransformContext(ctxt);
    xsltFreeSecurityPrefs(sec);
    xmlFreeDoc(doc);
    xsltFreeStylesheet(style);
    return rc;
}

static long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The process's current virtual size in bytes (0 if unknown). */
static unsigned long current_vsize(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long pages = 0;
    if (f != NULL) {
        if (fscanf(f, "%lu", &pages) != 1) pages = 0;
        fclose(f);
    }
    return pages * (unsigned long)sysconf(_SC_PAGESIZE);
}

static int write_all(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/*
 * Transforms `xml` with `xsl` in a forked child. Returns 0 with *out (malloc'd, free with
 * varti_xslt_free) and *out_len on success; otherwise a nonzero code and a message in
 * `err`: 1 refused or failed, 2 deadline passed (child killed), 3 result too large,
 * 4 the child could not run.
 */
int varti_xslt_transform(const char *xml, size_t xml_len, const char *xsl, size_t xsl_len,
                         unsigned long op_limit, int max_depth, long deadline_ms,
                         unsigned long memory_bytes, size_t max_out, char **out,
                         size_t *out_len, char *err, size_t err_len) {
    *out = NULL;
    *out_len = 0;
    err[0] = '\0';
    xmlInitParser();
    int fds[2];
    if (pipe(fds) != 0) {
        snprintf(err, err_len, "cannot create a pipe: %s", strerror(errno));
        return 4;
    }
    unsigned long vsize = current_vsize();
    pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        snprintf(err, err_len, "cannot fork: %s", strerror(errno));
        return 4;
    }
    if (pid == 0) {
        close(fds[0]);
        if (vsize > 0) {
            struct rlimit as = {vsize + memory_bytes, vsize + memory_bytes};
            setrlimit(RLIMIT_AS, &as);
        }
        long secs = deadline_ms / 1000 + 1;
        struct rlimit cpu = {(rlim_t)secs, (rlim_t)secs + 1};
        setrlimit(RLIMIT_CPU, &cpu);
        char *result = NULL;
        int len = 0;
        char child_err[600];
        child_err[0] = '\0';
        int rc = transform_here(xml, xml_len, xsl, xsl_len, op_limit, max_depth, &result, &len,
                                child_err, sizeof child_err);
        unsigned char status = (unsigned char)rc;
        write_all(fds[1], &status, 1);
        if (rc == 0)
            write_all(fds[1], result, (size_t)len);
        else
            write_all(fds[1], child_err, strlen(child_err));
        _exit(0);
    }
    close(fds[1]);
    size_t cap = 64 * 1024, len = 0;
    char *buf = malloc(cap);
    long deadline = now_ms() + deadline_ms;
    int code = 0;
    for (;;) {
        long left = deadline - now_ms();
        if (left <= 0) { code = 2; break; }
        struct pollfd p = {fds[0], POLLIN, 0};
        int r = poll(&p, 1, (int)left);
        if (r < 0 && errno == EINTR) continue;
        if (r == 0) { code = 2; break; }
        if (len == cap) {
            if (cap >= max_out + 1) { code = 3; break; }
            cap *= 2;
            char *grown = realloc(buf, cap);
            if (grown == NULL) { code = 4; break; }
            buf = grown;
        }
        ssize_t n = read(fds[0], buf + len, cap - len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        len += (size_t)n;
        if (len > max_out + 1) { code = 3; break; }
    }
    close(fds[0]);
    kill(pid, SIGKILL);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}
    if (code == 2) {
        snprintf(err, err_len, "the transformation did not finish within %ld ms", deadline_ms);
    } else if (code == 3) {
        snprintf(err, err_len, "the transformed evidence is larger than %zu bytes", max_out);
    } else if (code == 4) {
        snprintf(err, err_len, "out of memory");
    } else if (len == 0) {
        code = 1;
        snprintf(err, err_len, "the transformation ended without a result (a limit was reached)");
    } else if (buf[0] != 0) {
        code = 1;
        size_t n = len - 1 < err_len - 1 ? len - 1 : err_len - 1;
        memcpy(err, buf + 1, n);
        err[n] = '\0';
    } else {
        memmove(buf, buf + 1, len - 1);
        *out = buf;
        *out_len = len - 1;
        return 0;
    }
    free(buf);
    return code;
}

void varti_xslt_free(char *p) { free(p); }
