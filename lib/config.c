/* The list of hosts to mount, from -o host=NAME=URI and the config file.
 *
 * The file format is one directive a line: `host NAME URI`; blank lines and
 * lines starting with '#' are ignored.  This module checks names and syntax
 * only; it never opens a connection.
 */
#include "internal.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "cleanup.h"

int vm_config_add_host(struct vm_config *c, const char *name, const char *uri)
{
    if (!vm_name_is_legal(name) || name[0] == '.')
        return vm_error(EINVAL, "host name '%s' is not a legal file name", name);
    if (!uri || !*uri)
        return vm_error(EINVAL, "host '%s' has no URI", name);
    for (size_t i = 0; i < c->nhosts; i++)
        if (strcmp(c->hosts[i].name, name) == 0)
            return vm_error(EEXIST, "host '%s' is configured twice", name);
    struct vm_host_config *hosts = realloc(c->hosts, (c->nhosts + 1) * sizeof *hosts);
    if (!hosts)
        return vm_error(ENOMEM, "out of memory");
    c->hosts = hosts;
    char *n = strdup(name), *u = strdup(uri);
    if (!n || !u) {
        free(n);
        free(u);
        return vm_error(ENOMEM, "out of memory");
    }
    c->hosts[c->nhosts++] = (struct vm_host_config){.name = n, .uri = u};
    return 0;
}

int vm_config_add_host_spec(struct vm_config *c, const char *spec)
{
    const char *eq = strchr(spec, '=');
    if (!eq || eq == spec || !eq[1])
        return vm_error(EINVAL, "host=%s: expected host=NAME=URI", spec);
    CLEANUP_FREE char *name = strndup(spec, (size_t)(eq - spec));
    if (!name)
        return vm_error(ENOMEM, "out of memory");
    return vm_config_add_host(c, name, eq + 1);
}

static char *next_word(char **p)
{
    while (**p && isspace((unsigned char)**p))
        (*p)++;
    if (!**p)
        return NULL;
    char *w = *p;
    while (**p && !isspace((unsigned char)**p))
        (*p)++;
    if (**p)
        *(*p)++ = '\0';
    return w;
}

int vm_config_parse(struct vm_config *c, const char *text, const char *source)
{
    CLEANUP_FREE char *copy = strdup(text);
    if (!copy)
        return vm_error(ENOMEM, "out of memory");
    int lineno = 0;
    for (char *line = copy; line;) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        lineno++;
        char *p = line;
        char *word = next_word(&p);
        if (word && word[0] != '#') {
            if (strcmp(word, "host") != 0)
                return vm_error(EINVAL, "%s:%d: unknown directive '%s' (expected 'host NAME URI')",
                                source, lineno, word);
            char *name = next_word(&p);
            char *uri = next_word(&p);
            char *extra = next_word(&p);
            if (!name || !uri || (extra && extra[0] != '#'))
                return vm_error(EINVAL, "%s:%d: expected 'host NAME URI'", source, lineno);
            if (vm_config_add_host(c, name, uri) < 0)
                return vm_error(vm_error_errno(), "%s:%d: %s", source, lineno, vm_error_message());
        }
        line = nl ? nl + 1 : NULL;
    }
    return 0;
}

int vm_config_read_file(struct vm_config *c, const char *path, bool must_exist)
{
    FILE *f = fopen(path, "re");
    if (!f) {
        if (errno == ENOENT && !must_exist)
            return 0;
        return vm_error(errno, "cannot read config file %s: %s", path, strerror(errno));
    }
    CLEANUP_FREE char *text = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&text, &len);
    char buf[4096];
    size_t n;
    while (mem && (n = fread(buf, 1, sizeof buf, f)) > 0)
        fwrite(buf, 1, n, mem);
    bool failed = ferror(f);
    fclose(f);
    if (!mem || fclose(mem) != 0 || failed)
        return vm_error(EIO, "cannot read config file %s", path);
    return vm_config_parse(c, text, path);
}

void vm_config_clear(struct vm_config *c)
{
    for (size_t i = 0; i < c->nhosts; i++) {
        free(c->hosts[i].name);
        free(c->hosts[i].uri);
    }
    free(c->hosts);
    c->hosts = NULL;
    c->nhosts = 0;
}
