/* path.c — tidying a path for display and metadata without changing what it names. */
#include <string.h>
#include <sys/stat.h>

#include "fedllm/fileio.h"

/* Is the path made of out[0..len) a real directory (not a symbolic link)? Only then does
 * "that/.." name the same place as the part before it. */
static int plain_dir(char *out, size_t len) {
    char keep = out[len];
    out[len] = '\0';
    struct stat st;
    int ok = lstat(len ? out : ".", &st) == 0 && S_ISDIR(st.st_mode);
    out[len] = keep;
    return ok;
}

int fl_path_normalize(char *path) {
    size_t n = strlen(path), w = 0, r = 0;
    int absolute = path[0] == '/';
    size_t floor = absolute ? 1 : 0; /* what ".." may never remove */
    if (absolute) w = r = 1;
    while (r < n) {
        size_t end = r;
        while (end < n && path[end] != '/')
            end++;
        size_t len = end - r;
        if (len == 0 || (len == 1 && path[r] == '.')) { /* "//" and "/./" */
            r = end + 1;
            continue;
        }
        if (len == 2 && path[r] == '.' && path[r + 1] == '.') {
            /* the last component written, if there is one and it is not itself ".." */
            size_t last = w > floor ? w - 1 : w; /* w - 1 is the '/' after it */
            size_t start = last;
            while (start > floor && path[start - 1] != '/')
                start--;
            int prev_is_dotdot = last - start == 2 && path[start] == '.' && path[start + 1] == '.';
            if (w > floor && !prev_is_dotdot && plain_dir(path, last)) {
                w = start;
                r = end + 1;
                continue;
            }
            if (w == floor && absolute) { /* "/.." is "/" */
                r = end + 1;
                continue;
            }
        }
        memmove(path + w, path + r, len);
        w += len;
        if (end < n) path[w++] = '/';
        r = end + 1;
    }
    if (w > floor && path[w - 1] == '/') w--; /* no trailing slash, except the root's */
    if (w == 0) path[w++] = '.';
    path[w] = '\0';
    return (int)w;
}
